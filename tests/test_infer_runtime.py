"""The torch-free Runtime against the PyTorch reference: golden parity for every method, batching,
input kinds, templates, slerp edge cases, thread safety, and the refusals (no silent CPU fallback)."""

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zscir_infer import BundleError, Runtime, TemplateError
from zscir_infer.backends import BackendError
from zscir_infer.runtime import average, normalize, slerp
from zscir_train import composed

PARITY = 1e-5  # fp32 max abs vs the PyTorch reference (issue 6)
SAME = 1e-6  # the same graph on the same inputs, only batched differently
BUNDLES = ("tiny_bundle", "tiny_slerp_bundle", "tiny_pic2word_bundle")


def read_golden(bundle: Path) -> dict:
    """The export's golden inputs and PyTorch outputs, with absolute image paths and loaded arrays."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    golden_file = bundle / manifest["golden"]["file"]
    golden = json.loads(golden_file.read_text())
    base = golden_file.parent
    return {
        "images": [base / name for name in golden["images"]],
        "texts": golden["texts"],
        "methods": {m: np.load(base / f) for m, f in golden["methods"].items()},
        "image_features": np.load(base / golden["image_features"]),
        "text_features": np.load(base / golden["text_features"]),
    }


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    with Runtime(tiny_bundle) as rt:
        yield rt


@pytest.mark.parametrize("bundle_fixture", BUNDLES)
def test_every_method_matches_the_golden_pytorch_outputs(request, bundle_fixture):
    bundle = request.getfixturevalue(bundle_fixture)
    golden = read_golden(bundle)
    rt = Runtime(bundle)
    queries = list(zip(golden["images"], golden["texts"], strict=True))
    assert golden["methods"], "the golden file lists no method"
    for method, expected in golden["methods"].items():
        got = rt.encode_queries(queries, method=method)
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=PARITY, err_msg=f"method {method}")
    pixels = rt.preprocess(golden["images"])
    np.testing.assert_allclose(rt.image_features(pixels), golden["image_features"], rtol=0, atol=PARITY)
    np.testing.assert_allclose(rt.text_features(golden["texts"]), golden["text_features"], rtol=0, atol=PARITY)
    expected_methods = {"slerp", "image", "text", "average"} | ({"phi"} if bundle_fixture != "tiny_slerp_bundle" else set())
    assert expected_methods <= set(golden["methods"])


def test_outputs_are_unit_rows_and_independent_of_the_batch_size(tiny_bundle):
    golden = read_golden(tiny_bundle)
    queries = list(zip(golden["images"], golden["texts"], strict=True)) * 2
    one, many = Runtime(tiny_bundle, batch_size=1), Runtime(tiny_bundle, batch_size=3)
    for method in ("phi", "slerp", "average"):
        a, b = one.encode_queries(queries, method=method), many.encode_queries(queries, method=method)
        np.testing.assert_allclose(a, b, rtol=0, atol=SAME)
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=SAME)
    np.testing.assert_allclose(one.encode_images(golden["images"]), many.encode_images(golden["images"]), atol=SAME)


def test_every_image_input_kind_gives_the_same_features(runtime, tiny_bundle):
    path = read_golden(tiny_bundle)["images"][0]
    pil = Image.open(path)
    kinds = [path, str(path), path.read_bytes(), pil, np.asarray(pil.convert("RGB"))]
    features = runtime.encode_images(kinds)
    np.testing.assert_allclose(features, np.repeat(features[:1], len(kinds), 0), rtol=0, atol=SAME)
    np.testing.assert_allclose(runtime.encode_pixels(runtime.preprocess([path])), features[:1], atol=SAME)


def test_exif_orientation_is_applied_before_encoding(runtime, tiny_bundle):
    pixels = np.asarray(Image.open(read_golden(tiny_bundle)["images"][3]).convert("RGB"))  # non-square
    stored = Image.fromarray(pixels)
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": what a phone writes for a portrait shot
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    upright = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    tagged, expected = runtime.encode_images([buffer.getvalue(), np.asarray(upright)])
    np.testing.assert_allclose(tagged, expected, rtol=0, atol=SAME)


def test_wrong_image_arrays_are_refused(runtime):
    with pytest.raises(ValueError, match="uint8"):
        runtime.encode_images([np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match=r"pixels must be \[B, 3"):
        runtime.encode_pixels(np.zeros((1, 3, 7, 7), dtype=np.float32))


def test_empty_inputs_give_empty_results(runtime):
    d = runtime.embed_dim
    assert runtime.encode_images([]).shape == (0, d)
    assert runtime.encode_texts([]).shape == (0, d)
    for method in ("phi", "slerp", "image", "text", "average"):
        assert runtime.encode_queries([], method=method).shape == (0, d)


def test_templates_follow_the_reference_rules(runtime, tiny_bundle):
    image = read_golden(tiny_bundle)["images"][0]
    default = runtime.template()
    assert "$" in default and "{caption}" in default
    by_default = runtime.encode_queries([(image, "is red")])
    np.testing.assert_allclose(runtime.encode_queries([(image, "is red")], template=default), by_default, atol=SAME)
    np.testing.assert_allclose(runtime.encode_queries([(image, "is red")], template="default"), by_default, atol=SAME)
    other = runtime.encode_queries([(image, "is red")], template="a sketch of $ , {caption}")
    assert np.abs(other - by_default).max() > 1e-3  # the template reaches the encoder
    with pytest.raises(TemplateError, match="does not contain the placeholder"):
        runtime.encode_queries([(image, "is red")], template="a photo that {caption}")
    with pytest.raises(TemplateError, match="no '{caption}' field"):
        runtime.encode_queries([(image, "is red")], template="a photo of $")
    # one template syntax for every tool: the placeholder as a field equals it written out
    as_field = runtime.encode_queries([(image, "is red")], template=default.replace("$", "{placeholder}"))
    np.testing.assert_allclose(as_field, by_default, atol=SAME)


def test_slerp_end_points_are_the_image_and_text_baselines(runtime, tiny_bundle):
    golden = read_golden(tiny_bundle)
    queries = list(zip(golden["images"], golden["texts"], strict=True))
    np.testing.assert_allclose(runtime.encode_queries(queries, "slerp", alpha=0.0),
                               runtime.encode_queries(queries, "image"), atol=SAME)
    np.testing.assert_allclose(runtime.encode_queries(queries, "slerp", alpha=1.0),
                               runtime.encode_queries(queries, "text"), atol=SAME)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        runtime.encode_queries(queries, "slerp", alpha=1.5)


def test_numpy_slerp_and_average_equal_the_torch_reference_including_near_parallel_pairs():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 48)).astype(np.float32)
    b = rng.normal(size=(64, 48)).astype(np.float32)
    b[:16] = a[:16] * 3.0 + rng.normal(scale=1e-3, size=(16, 48)).astype(np.float32)  # |cos| > 0.9995
    b[16:20] = -a[16:20]  # antiparallel
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    for alpha in (0.0, 0.3, 0.8, 1.0):
        np.testing.assert_allclose(slerp(a, b, alpha), composed.slerp(ta, tb, alpha).numpy(), rtol=0, atol=SAME)
    np.testing.assert_allclose(average(a, b), composed.average(ta, tb).numpy(), rtol=0, atol=SAME)
    np.testing.assert_allclose(normalize(a), torch.nn.functional.normalize(ta, dim=-1).numpy(), rtol=0, atol=SAME)


def test_method_errors_are_clear(runtime, tiny_slerp_bundle, tiny_bundle):
    image = read_golden(tiny_bundle)["images"][0]
    with pytest.raises(ValueError, match="Unknown method 'product'"):
        runtime.encode_queries([(image, "x")], method="product")
    slerp_rt = Runtime(tiny_slerp_bundle)
    assert slerp_rt.default_method == "slerp" and slerp_rt.placeholder is None
    with pytest.raises(ValueError, match="no(ne)? .*query encoder|has none"):
        slerp_rt.encode_queries([(image, "x")], method="phi")
    assert slerp_rt.encode_queries([(image, "x")]).shape == (1, slerp_rt.embed_dim)  # its default: slerp


def test_concurrent_calls_give_the_sequential_results(tiny_bundle):
    golden = read_golden(tiny_bundle)
    rt = Runtime(tiny_bundle, batch_size=2, threads=1)  # sessions are opened by the racing threads
    jobs = [(m, list(zip(golden["images"][i:], golden["texts"][i:], strict=True)))
            for m in ("phi", "slerp", "text", "average") for i in range(3)]
    results, errors = [None] * len(jobs), []

    def work(j):
        try:
            results[j] = rt.encode_queries(jobs[j][1], method=jobs[j][0])
        except Exception as exc:  # surfaced below with its job
            errors.append((j, exc))

    threads = [threading.Thread(target=work, args=(j,)) for j in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (method, queries), got in zip(jobs, results, strict=True):
        np.testing.assert_allclose(got, Runtime(tiny_bundle).encode_queries(queries, method=method), atol=SAME)


def test_the_cpu_provider_is_reported(runtime):
    used = runtime.providers_used()
    assert set(used) == {"image_encoder", "query_encoder", "text_encoder"}
    assert all(providers == ["CPUExecutionProvider"] for providers in used.values())


def test_a_gpu_request_never_falls_back_to_cpu(tiny_bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the refusal path needs a CPU-only install")
    rt = Runtime(tiny_bundle, device="cuda")
    with pytest.raises(BackendError, match="CUDAExecutionProvider.*onnxruntime-gpu"):
        rt.encode_texts(["a red circle"])
    with pytest.raises(BackendError, match="TensorrtExecutionProvider"):
        Runtime(tiny_bundle, device="tensorrt").encode_texts(["a red circle"])


def test_backend_device_and_precision_are_checked_up_front(tiny_bundle):
    with pytest.raises(BackendError, match="Unknown backend"):
        Runtime(tiny_bundle, backend="tflite")
    with pytest.raises(BackendError, match="Unknown device"):
        Runtime(tiny_bundle, device="gpu")
    with pytest.raises(BackendError, match="trt backend runs TensorRT engines on a GPU"):
        Runtime(tiny_bundle, backend="trt", device="cpu")
    with pytest.raises(BundleError, match="no int4 image_encoder"):
        Runtime(tiny_bundle, precision="int4")
    with pytest.raises(ValueError, match="batch_size"):
        Runtime(tiny_bundle, batch_size=0)


def test_each_graph_at_each_precision_reproduces_its_golden_pytorch_outputs(tiny_bundle):
    """Polygraphy-style: the backend alone on the export's per-graph inputs; fp32 to 1e-5, the reduced
    precisions to the cosine the manifest promises."""
    from zscir_infer.backends.ort import OrtSession
    from zscir_infer.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    golden_dir = tiny_bundle / "golden"
    golden = json.loads((golden_dir / "golden.json").read_text())["graphs"]
    checked = []
    for (name, precision), spec in bundle.graphs.items():
        feeds = {k: np.load(golden_dir / f) for k, f in golden[name]["inputs"].items()}
        with OrtSession(bundle.verified(spec.file), disabled_optimizers=spec.ort_disabled_optimizers) as session:
            outputs = session.infer(feeds)
        for output, f in golden[name]["outputs"].items():
            expected, got = np.load(golden_dir / f), outputs[output]
            if precision == "fp32":
                np.testing.assert_allclose(got, expected, rtol=0, atol=PARITY, err_msg=f"{name} {output}")
            else:
                promised = bundle.manifest["graphs"][name][precision]["validation"][output]["threshold_min_cosine"]
                cosine = (normalize(got) * normalize(expected)).sum(-1)
                assert cosine.min() >= promised, f"{name}.{precision}.{output}: cosine {cosine.min()} < {promised}"
            checked.append((name, precision))
    assert {p for _, p in checked} == {"fp32", "fp16", "int8"}


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_a_reduced_precision_runtime_stays_close_to_fp32(tiny_bundle, precision):
    golden = read_golden(tiny_bundle)
    queries = list(zip(golden["images"], golden["texts"], strict=True))
    reduced, full = Runtime(tiny_bundle, precision=precision), Runtime(tiny_bundle)
    for method in ("phi", "average"):
        cosine = (reduced.encode_queries(queries, method) * full.encode_queries(queries, method)).sum(-1)
        assert cosine.min() > 0.99, (method, cosine)
