"""The C++ consumer's figures, measured in one run on one machine: results/cpp/report.{json,md}.

- latency: one composed query (phi and slerp), zscir_query (OpenVINO) next to Runtime.encode_queries
  (ONNX Runtime), both on the same bundle, image, text and thread count, warm, median of N;
- token parity: zscir_check tokens vs zscir_infer.tokenizer on tests/test_infer_tokenizer.py's corpus;
- pixel parity: zscir_check pixels vs zscir_infer.preprocess on JPEG/PNG of odd sizes and modes.

    .venv/bin/python scripts/cpp_report.py [--bundle runs/bench-work/ViT-B-32-lincir] [--build cpp/build]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from zscir_infer.contract import PreprocessConfig  # noqa: E402
from zscir_infer.preprocess import load_and_preprocess  # noqa: E402
from zscir_infer.runtime import Runtime  # noqa: E402

TEXT = "make it red and show two of them"
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SIZES = [(37, 53), (301, 199), (64, 17), (641, 481), (224, 224), (225, 300), (1000, 33)]


def machine() -> dict:
    flags = set()
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"]
    return {"cpu": model, "cores": os.cpu_count(), "isa": [f for f in wanted if f in flags],
            "python": platform.python_version(), "platform": platform.platform()}


def _image(path: Path, w: int, h: int, rng) -> Path:
    x, y = np.linspace(0, 6, w)[None, :, None], np.linspace(0, 4, h)[:, None, None]
    base = 127 + 100 * np.sin(x * [1, 1.3, 0.7] + y * [0.5, 1.1, 1.7]) + rng.normal(0, 20, (h, w, 3))
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def latency(build: Path, bundle: Path, image: Path, repeat: int, threads: int) -> dict:
    out = {}
    with Runtime(bundle, threads=threads) as rt:
        for method in ("phi", "slerp") if rt.bundle.has_phi else ("slerp", "sum"):
            rt.encode_queries([(str(image), TEXT)], method=method)  # warm: sessions open, first run
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                py = rt.encode_queries([(str(image), TEXT)], method=method)[0]
                times.append((time.perf_counter() - t0) * 1000)
            done = subprocess.run([str(build / "zscir_query"), "--bundle", str(bundle), "--image", str(image), "--text",
                                   TEXT, "--method", method, "--threads", str(threads), "--repeat", str(repeat)],
                                  capture_output=True, text=True, check=True)
            cpp = json.loads(done.stdout)
            out[method] = {
                "python_ort_median_ms": round(statistics.median(times), 2),
                "cpp_openvino_median_ms": round(cpp["timing_ms"]["median_ms"], 2),
                "cpp_stages_mean_ms": {k: round(v, 3) for k, v in cpp["timing_ms"]["stages_mean_ms"].items()},
                "cpp_first_query_with_load_ms": round(cpp["timing_ms"]["first_query_with_load_ms"], 1),
                "cosine_cpp_vs_python": float(np.asarray(cpp["vector"], dtype=np.float32) @ py),
                "engine": cpp["engine"],
            }
    return out


def token_parity(build: Path, bundle: Path, work: Path) -> dict:
    import ftfy

    from tests.test_infer_tokenizer import make_corpus
    from zscir_infer.tokenizer import ClipTokenizer

    corpus = make_corpus()
    reference = ClipTokenizer.from_file(bundle / "tokenizer.json")(corpus)

    def ids(texts):
        (work / "s.json").write_text(json.dumps(texts))
        subprocess.run([str(build / "zscir_check"), "tokens", str(bundle / "tokenizer.json"), str(work / "s.json"),
                        str(work / "ids")], check=True, capture_output=True)
        return np.fromfile(work / "ids", dtype="<i8").reshape(len(texts), 77)

    fixed = [ftfy.fix_text(t) for t in corpus]
    neutral = np.array([f == t for f, t in zip(fixed, corpus, strict=True)])
    ascii_ = np.array([t.isascii() for t in corpus])
    raw_same = (ids(corpus) == reference).all(axis=1)
    fixed_same = (ids(fixed) == reference).all(axis=1)
    return {"strings": len(corpus), "raw_text_equal": int(raw_same.sum()),
            "ftfy_neutral_strings": int(neutral.sum()), "ftfy_neutral_equal": int(raw_same[neutral].sum()),
            "ascii_strings": int(ascii_.sum()), "ascii_equal": int(raw_same[ascii_].sum()),
            "after_ftfy_equal": int(fixed_same.sum())}


def pixel_parity(build: Path, work: Path) -> dict:
    rng = np.random.default_rng(16)
    files = []
    for w, h in SIZES:
        for ext in ("jpg", "png"):
            files.append(_image(work / f"rgb_{w}x{h}.{ext}", w, h, rng))
    gray = work / "gray.jpg"
    Image.open(files[0]).convert("L").save(gray)
    files.append(gray)
    configs = {"shortest": PreprocessConfig(224, MEAN, STD), "longest": PreprocessConfig(224, MEAN, STD, resize_mode="longest"),
               "targetpad": PreprocessConfig(224, MEAN, STD).with_targetpad(),
               "squash": PreprocessConfig(224, MEAN, STD, resize_mode="squash")}
    out = {}
    for name, cfg in configs.items():
        (work / "cfg.json").write_text(json.dumps(cfg.to_dict()))
        exact, worst, refused, tried = 0, 0, 0, 0
        for f in files + ([_image(work / f"square_{n}.{ext}", n, n, rng) for n in (97, 301) for ext in ("jpg", "png")]
                          if name == "squash" else []):
            done = subprocess.run([str(build / "zscir_check"), "resized", str(work / "cfg.json"), str(f), str(work / "r")],
                                  capture_output=True, text=True)
            tried += 1
            if done.returncode and "squashes images to a square" in done.stderr:
                refused += 1  # squash of a non-square image: refused by design (docs/cpp.md)
                continue
            done.check_returncode()
            ours = np.fromfile(work / "r", dtype=np.uint8).reshape(cfg.image_size, cfg.image_size, 3)
            subprocess.run([str(build / "zscir_check"), "pixels", str(work / "cfg.json"), str(f), str(work / "p")], check=True)
            pixels = np.fromfile(work / "p", dtype="<f4").reshape(3, cfg.image_size, cfg.image_size)
            theirs = load_and_preprocess(f, cfg)
            exact += bool(np.array_equal(pixels, theirs))
            back = np.rint((theirs.transpose(1, 2, 0) * np.asarray(STD, np.float32) + np.asarray(MEAN, np.float32)) * 255)
            worst = max(worst, int(np.abs(ours.astype(int) - back.astype(int)).max()))
        out[name] = {"images": tried, "bit_exact": exact, "worst_uint8_diff": worst, "refused": refused}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "runs" / "bench-work" / "ViT-B-32-lincir")
    parser.add_argument("--build", type=Path, default=REPO / "cpp" / "build")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "cpp")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        image = _image(work / "query.jpg", 641, 481, np.random.default_rng(0))
        report = {"machine": machine(), "bundle": args.bundle.name, "threads": args.threads, "repeat": args.repeat,
                  "latency": latency(args.build, args.bundle, image, args.repeat, args.threads),
                  "token_parity": token_parity(args.build, args.bundle, work),
                  "pixel_parity": pixel_parity(args.build, work)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# C++ consumer: figures ({report['machine']['cpu']}, {report['machine']['cores']} cores, "
             f"ISA {' '.join(report['machine']['isa'])})", "",
             f"Bundle `{report['bundle']}`, one query (641x481 JPEG + text), {args.threads} threads, median of "
             f"{args.repeat} warm queries, same run.", "",
             "| method | Python Runtime (ONNX Runtime) ms | zscir_query (OpenVINO) ms | cosine |", "|---|---|---|---|"]
    for method, row in report["latency"].items():
        lines.append(f"| {method} | {row['python_ort_median_ms']} | {row['cpp_openvino_median_ms']} | "
                     f"{row['cosine_cpp_vs_python']:.6f} |")
    t = report["token_parity"]
    lines += ["", f"Token ids (held-out corpus, {t['strings']} strings): raw text {t['raw_text_equal']}/{t['strings']} "
              f"equal; ftfy-neutral strings {t['ftfy_neutral_equal']}/{t['ftfy_neutral_strings']}; ASCII "
              f"{t['ascii_equal']}/{t['ascii_strings']}; after ftfy.fix_text {t['after_ftfy_equal']}/{t['strings']}.", "",
              "| preprocessing | images | bit-exact pixels | worst uint8 diff | refused |", "|---|---|---|---|---|"]
    for name, row in report["pixel_parity"].items():
        lines.append(f"| {name} | {row['images']} | {row['bit_exact']} | {row['worst_uint8_diff']} | {row['refused']} |")
    lines += ["", "squash: non-square images are refused by design (Pillow 13's pass order for them is not "
              "reproduced, docs/cpp.md); square ones are checked."]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
