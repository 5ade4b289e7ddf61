"""The C++ consumer (cpp/): zscir_query against the Python runtime, on the same bundles and galleries.

The session fixture builds cpp/ with CMake into cpp/build (git-ignored; incremental on reruns, or
$ZSCIR_CPP_BUILD). It skips, saying which, only when a C++ dependency is missing (`make setup` installs
them as root); a build that fails with every dependency present is a failure.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zscir_infer.contract import METHODS, PreprocessConfig
from zscir_infer.preprocess import load_and_preprocess
from zscir_infer.runtime import Runtime

REPO = Path(__file__).resolve().parent.parent
HEADERS = ("jpeglib.h", "png.h", "sqlite3.h", "nlohmann/json.hpp", "faiss/index_io.h", "openssl/evp.h")
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
MIN_COSINE = 0.9999
TEXT = "make it red and show two of them"


def _missing_deps() -> list[str]:
    missing = [tool for tool in ("cmake", "g++") if shutil.which(tool) is None]
    missing += [h for h in HEADERS if not any((Path(d) / h).is_file() for d in ("/usr/include", "/usr/local/include"))]
    try:
        import openvino  # noqa: F401
    except ImportError:
        missing.append("the openvino wheel")
    return missing


@pytest.fixture(scope="session")
def cpp_bin() -> Path:
    missing = _missing_deps()
    if missing:
        pytest.skip(f"C++ build dependencies missing: {', '.join(missing)} (run `make setup` as root)")
    build = Path(os.environ.get("ZSCIR_CPP_BUILD") or REPO / "cpp" / "build")
    env = {**os.environ, "ZSCIR_PYTHON": sys.executable}
    configure = subprocess.run(["cmake", "-S", str(REPO / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                               capture_output=True, text=True, env=env)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    compiled = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stdout[-5000:] + compiled.stderr[-3000:]
    return build


def query(cpp_bin: Path, bundle: Path, image, text: str, *args: str) -> dict:
    cmd = [str(cpp_bin / "zscir_query"), "--bundle", str(bundle), "--image", str(image), "--text", text,
           "--threads", "2", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _smooth(rng, width: int, height: int) -> np.ndarray:
    x = np.linspace(0, 6, width)[None, :, None]
    y = np.linspace(0, 4, height)[:, None, None]
    base = 127 + 100 * np.sin(x * [1, 1.3, 0.7] + y * [0.5, 1.1, 1.7]) + rng.normal(0, 20, (height, width, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """JPEG and PNG of odd sizes and modes, plus EXIF-rotated JPEGs."""
    root = tmp_path_factory.mktemp("cpp-images")
    rng = np.random.default_rng(16)
    out = {}
    for w, h in [(37, 53), (301, 199), (64, 17), (641, 481), (225, 300), (1000, 33)]:
        pixels = _smooth(rng, w, h)
        for ext in ("jpg", "png"):
            out[f"rgb_{w}x{h}.{ext}"] = root / f"rgb_{w}x{h}.{ext}"
            Image.fromarray(pixels).save(out[f"rgb_{w}x{h}.{ext}"], quality=90)
    pixels = _smooth(rng, 123, 77)
    modes = {"gray.jpg": Image.fromarray(pixels).convert("L"), "gray.png": Image.fromarray(pixels).convert("L"),
             "rgba.png": Image.fromarray(np.dstack([pixels, pixels[:, :, :1]])),
             "palette.png": Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE),
             "gray16.png": Image.fromarray(pixels[:, :, 0].astype(np.uint16) * 257 + 100),
             "bilevel.png": Image.fromarray(pixels).convert("1")}
    for name, im in modes.items():
        out[name] = root / name
        im.save(out[name])
    for orientation in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        out[f"exif{orientation}.jpg"] = root / f"exif{orientation}.jpg"
        Image.fromarray(_smooth(rng, 91, 47)).save(out[f"exif{orientation}.jpg"], exif=exif.tobytes())
    return out


# --- pixels ----------------------------------------------------------------------------------------------
PIXEL_CONFIGS = {
    "shortest-64": PreprocessConfig(64, MEAN, STD),
    "shortest-224": PreprocessConfig(224, MEAN, STD),
    "bilinear-97": PreprocessConfig(97, MEAN, STD, "bilinear"),
    "longest-224": PreprocessConfig(224, MEAN, STD, resize_mode="longest"),
    "targetpad-224": PreprocessConfig(224, MEAN, STD).with_targetpad(),
}


@pytest.mark.parametrize("config", sorted(PIXEL_CONFIGS))
def test_pixels_equal_python_preprocessing(cpp_bin, images, tmp_path, config):
    """Bit-exact float32 pixels: libjpeg/libpng decoding, EXIF orientation, Pillow's fixed-point resize."""
    cfg = PIXEL_CONFIGS[config]
    spec = tmp_path / "preprocess.json"
    spec.write_text(json.dumps(cfg.to_dict()))
    for name, path in images.items():
        out = tmp_path / "pixels.f32"
        subprocess.run([str(cpp_bin / "zscir_check"), "pixels", str(spec), str(path), str(out)], check=True)
        ours = np.fromfile(out, dtype="<f4").reshape(3, cfg.image_size, cfg.image_size)
        theirs = load_and_preprocess(path, cfg)
        assert np.array_equal(ours, theirs), f"{name}: max diff {np.abs(ours - theirs).max() * min(STD) * 255:.2f}/255"


def test_squash_is_exact_for_square_images_and_refuses_the_others(cpp_bin, tmp_path):
    """Pillow 13 squashes some non-square images vertical pass first (a rule not reproduced): refused, not wrong."""
    cfg = PreprocessConfig(64, MEAN, STD, resize_mode="squash")
    spec = tmp_path / "p.json"
    spec.write_text(json.dumps(cfg.to_dict()))
    rng = np.random.default_rng(5)
    for size in ((97, 97), (301, 301)):
        path = tmp_path / f"sq{size[0]}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        subprocess.run([str(cpp_bin / "zscir_check"), "pixels", str(spec), str(path), str(tmp_path / "o")], check=True)
        ours = np.fromfile(tmp_path / "o", dtype="<f4").reshape(3, 64, 64)
        assert np.array_equal(ours, load_and_preprocess(path, cfg))
    tall = tmp_path / "tall.png"
    Image.fromarray(rng.integers(0, 256, (254, 59, 3), dtype=np.uint8)).save(tall)
    done = subprocess.run([str(cpp_bin / "zscir_check"), "pixels", str(spec), str(tall), str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "59x254" in done.stderr and "square" in done.stderr


def test_pixel_errors_name_the_file(cpp_bin, tmp_path):
    spec = tmp_path / "p.json"
    spec.write_text(json.dumps(PIXEL_CONFIGS["shortest-64"].to_dict()))
    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    done = subprocess.run([str(cpp_bin / "zscir_check"), "pixels", str(spec), str(bad), str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert done.returncode != 0 and str(bad) in done.stderr and "corrupt" in done.stderr


# --- tokens ------------------------------------------------------------------------------------------------
def test_token_ids_equal_python_on_held_out_corpus(cpp_bin, tiny_slerp_bundle, tmp_path):
    """10,000 hostile strings (tests/test_infer_tokenizer.py's corpus): exact wherever ftfy changes nothing,
    and exact on every string once ftfy.fix_text has run (C++ does all but ftfy)."""
    import ftfy

    from tests.test_infer_tokenizer import make_corpus
    from zscir_infer.tokenizer import ClipTokenizer

    tokenizer_json = tiny_slerp_bundle / "tokenizer.json"
    corpus = make_corpus()
    reference = ClipTokenizer.from_file(tokenizer_json)(corpus)

    def cpp_ids(texts: list[str]) -> np.ndarray:
        strings, out = tmp_path / "strings.json", tmp_path / "ids.i64"
        strings.write_text(json.dumps(texts))
        subprocess.run([str(cpp_bin / "zscir_check"), "tokens", str(tokenizer_json), str(strings), str(out)],
                       check=True, capture_output=True)
        return np.fromfile(out, dtype="<i8").reshape(len(texts), 77)

    fixed = [ftfy.fix_text(t) for t in corpus]
    assert np.array_equal(cpp_ids(fixed), reference)  # everything after ftfy is exact
    raw = cpp_ids(corpus)
    same = (raw == reference).all(axis=1)
    neutral = np.array([f == t for f, t in zip(fixed, corpus, strict=True)])
    assert neutral.sum() > 2000 and same[neutral].all()
    assert same.mean() > 0.4  # the corpus is built to be hostile to ftfy-less cleaning (docs/cpp.md)


# --- queries ---------------------------------------------------------------------------------------------
def _check_methods(cpp_bin, bundle: Path, image: Path, methods) -> None:
    runtime = Runtime(bundle, threads=2)
    for method in methods:
        out = query(cpp_bin, bundle, image, TEXT, "--method", method)
        ours = np.asarray(out["vector"], dtype=np.float32)
        theirs = runtime.encode_queries([(str(image), TEXT)], method=method)[0]
        assert out["method"] == method and ours.shape == theirs.shape
        assert abs(np.linalg.norm(ours) - 1) < 1e-5
        assert float(ours @ theirs) >= MIN_COSINE, (method, float(ours @ theirs))
    runtime.close()


def test_every_method_equals_runtime(cpp_bin, tiny_bundle, images):
    _check_methods(cpp_bin, tiny_bundle, images["rgb_301x199.jpg"], METHODS)


def test_encoder_bundle_methods_and_default(cpp_bin, tiny_slerp_bundle, images):
    _check_methods(cpp_bin, tiny_slerp_bundle, images["rgb_37x53.png"], ("slerp", "sum", "average"))
    out = query(cpp_bin, tiny_slerp_bundle, images["rgb_37x53.png"], TEXT)
    assert out["method"] == "slerp"
    done = subprocess.run([str(cpp_bin / "zscir_query"), "--bundle", str(tiny_slerp_bundle), "--image",
                           str(images["rgb_37x53.png"]), "--text", TEXT, "--method", "phi"], capture_output=True, text=True)
    assert done.returncode == 1 and "query encoder" in done.stderr


def test_methods_differ_and_alpha_moves_slerp(cpp_bin, tiny_bundle, images):
    """A wiring bug that fed the same graph to every method would pass a loose check; these must differ."""
    image = images["rgb_641x481.jpg"]
    vectors = {m: np.asarray(query(cpp_bin, tiny_bundle, image, TEXT, "--method", m)["vector"]) for m in METHODS}
    for a in METHODS:
        for b in METHODS:
            if a < b and a != "average" and b != "average":
                assert float(vectors[a] @ vectors[b]) < 0.99999, (a, b)
    text_side = np.asarray(query(cpp_bin, tiny_bundle, image, TEXT, "--method", "slerp", "--alpha", "1")["vector"])
    assert float(text_side @ vectors["text"]) > 0.99999


def test_tampered_graph_is_refused(cpp_bin, tiny_slerp_bundle, images, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_slerp_bundle, bundle)
    graph = bundle / "image_encoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    done = subprocess.run([str(cpp_bin / "zscir_query"), "--bundle", str(bundle), "--image", str(images["gray.png"]),
                           "--text", TEXT, "--method", "image"], capture_output=True, text=True)
    assert done.returncode == 1 and "sha256" in done.stderr and "image_encoder.onnx" in done.stderr
    assert done.stdout == ""


def test_bad_input_is_a_clear_error(cpp_bin, tiny_slerp_bundle, tmp_path):
    missing = tmp_path / "nowhere.jpg"
    done = subprocess.run([str(cpp_bin / "zscir_query"), "--bundle", str(tiny_slerp_bundle), "--image", str(missing),
                           "--text", TEXT], capture_output=True, text=True)
    assert done.returncode == 1 and str(missing) in done.stderr
    done = subprocess.run([str(cpp_bin / "zscir_query"), "--bundle", str(tmp_path), "--image", str(missing),
                           "--text", TEXT], capture_output=True, text=True)
    assert done.returncode == 1 and "manifest.json" in done.stderr
    done = subprocess.run([str(cpp_bin / "zscir_query"), "--bundle", str(tiny_slerp_bundle), "--image", str(missing),
                           "--text", TEXT, "--method", "nope"], capture_output=True, text=True)
    assert done.returncode == 1 and "Unknown method 'nope'" in done.stderr


# --- gallery -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_top_k_equals_python_gallery(cpp_bin, tiny_bundle, images, tmp_path, index):
    from zscir_infer.gallery import Gallery
    from zscir_infer.indexing import index_images

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(60):
        Image.fromarray(_smooth(rng, int(rng.integers(40, 120)), int(rng.integers(40, 120)))).save(folder / f"{i:03d}.png")
    gallery = tmp_path / "gallery"
    index_images(folder, bundle=tiny_bundle, gallery=gallery, index=index, workers=1)
    image = images["rgb_225x300.png"]
    for method in ("phi", "average"):
        out = query(cpp_bin, tiny_bundle, image, TEXT, "--method", method, "--gallery", str(gallery), "-k", "10")
        assert out["gallery"]["count"] == 60 and "faiss index" in out["gallery"]["search"]
        with Runtime(tiny_bundle, threads=2) as rt, Gallery.open(gallery) as g:
            scores, ids, paths = g.search(rt.encode_queries([(str(image), TEXT)], method=method), 10)
        assert [r["id"] for r in out["results"]] == ids[0].tolist()
        assert [r["path"] for r in out["results"]] == [str(p) for p in paths[0]]
        np.testing.assert_allclose([r["score"] for r in out["results"]], scores[0], atol=1e-4)


def test_gallery_of_another_bundle_is_refused(cpp_bin, tiny_bundle, tiny_slerp_bundle, images, tmp_path):
    from zscir_infer.indexing import index_images

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(_smooth(np.random.default_rng(1), 50, 60)).save(folder / "a.png")
    index_images(folder, bundle=tiny_bundle, gallery=tmp_path / "g", workers=1)
    done = subprocess.run([str(cpp_bin / "zscir_query"), "--bundle", str(tiny_slerp_bundle), "--image",
                           str(images["gray.jpg"]), "--text", TEXT, "--gallery", str(tmp_path / "g")],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "not comparable" in done.stderr


# --- a real backbone shape ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_vit_b32_bundle_every_method(cpp_bin, images):
    """ViT-B-32 (random weights, exported once into runs/bench-work, shared with the benchmarks)."""
    from zscir_bench.bundles import speed_bundle

    bundle = speed_bundle("ViT-B-32", REPO / "runs" / "bench-work", show_progress=False).bundle
    _check_methods(cpp_bin, bundle, images["rgb_641x481.jpg"], METHODS)
