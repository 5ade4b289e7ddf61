"""The GPU check (`scripts/gpu_check.sh` runs it on a machine with an NVIDIA GPU): every GPU path of the
runtime against ONNX Runtime on the CPU at fp32, and faiss on GPU against faiss on CPU.

    python -m zscir_bench.gpu_check --bundle BUNDLE [--images 200] [--faiss-n 1000000] [--out results/gpu]

For each GPU path (native TensorRT engines, ONNX Runtime CUDA fp32 / fp16, ONNX Runtime's TensorRT
provider fp16): the minimum cosine to the CPU fp32 reference on the bundle's golden inputs (every
method its manifest lists) and on N generated images, and the median latency of the image encoder
and of a composed query at batch 1 and 32. Then faiss: an IVF index over --faiss-n random unit
vectors, built and searched on GPU and on CPU, recall@10 of each against exact search, build and
search times. A path this machine cannot run is listed under `skipped` with the reason; no figure
is ever written for it. Writes gpu_check.json and gpu_check.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from zscir_infer.atomic import atomic_write_json, atomic_write_text
from zscir_infer.backends import BackendError
from zscir_infer.bundle import load_bundle
from zscir_infer.errors import ZscirError
from zscir_infer.runtime import Runtime

PATHS = (  # (name, backend, device, precision)
    ("trt-fp16", "trt", "cuda", "fp16"),
    ("ort-cuda-fp32", "ort", "cuda", "fp32"),
    ("ort-cuda-fp16", "ort", "cuda", "fp16"),
    ("ort-tensorrt-fp16", "ort", "tensorrt", "fp16"),
)
BATCHES = (1, 32)
TIMED_CALLS = 20
QUERIES = 1000
K = 10
TEXT = "as an origami sketch"


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    """n uint8 RGB images of varied sizes (the runtime decodes and preprocesses them)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = int(rng.integers(48, 400)), int(rng.integers(48, 400))
        small = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
        out.append(np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)[:h, :w])
    return out


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


def _median_ms(fn, calls: int = TIMED_CALLS) -> float:
    fn()  # warm-up: engines, cuDNN autotuning, allocations
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1e3, 3)


def golden_inputs(bundle_dir: Path) -> tuple[list[Path], list[str], list[str]]:
    golden = json.loads((bundle_dir / "golden" / "golden.json").read_text())
    images = [bundle_dir / "golden" / name for name in golden["images"]]
    return images, golden["texts"], list(golden["methods"])


def check_paths(bundle_dir: Path, n_images: int, progress=print) -> tuple[dict, dict]:
    """({path: figures}, {path: why skipped}) for the runtime's GPU paths."""
    reference = Runtime(bundle_dir, "ort", "cpu", "fp32", batch_size=32)
    g_images, g_texts, methods = golden_inputs(bundle_dir)
    images = _images(n_images)
    pairs = list(zip(g_images, g_texts, strict=True))
    ref = {"images": reference.encode_images(images),
           **{m: reference.encode_queries(pairs, method=m) for m in methods}}
    pixels = reference.preprocess(images[:max(BATCHES)])
    results, skipped = {}, {}
    for name, backend, device, precision in PATHS:
        progress(f"{name}: ...")
        try:
            rt = Runtime(bundle_dir, backend, device, precision, batch_size=32)
            rt.providers_used()  # opens every graph: a missing provider or engine fails here
        except (BackendError, ZscirError, ImportError, OSError) as exc:
            skipped[name] = str(exc)
            continue
        figures = {"providers": rt.providers_used(),
                   "min_cos_images": _min_cos(rt.encode_images(images), ref["images"]),
                   "min_cos_golden": {m: _min_cos(rt.encode_queries(pairs, method=m), ref[m]) for m in methods}}
        for b in BATCHES:
            figures[f"image_encoder_ms_b{b}"] = _median_ms(lambda b=b, rt=rt: rt.image_features(pixels[:b]))
            figures[f"query_ms_b{b}"] = _median_ms(
                lambda b=b, rt=rt: rt.encode_queries([(im, TEXT) for im in images[:b]]))
        results[name] = figures
        rt.close()
    return results, skipped


def check_faiss(n: int, d: int, progress=print) -> tuple[dict | None, str | None]:
    """IVF on GPU vs on CPU over n random unit vectors: recall@10 against exact search, build, search."""
    from zscir_infer import search as fsearch

    if fsearch.gpu_count() == 0:
        return None, "faiss has no GPU here (faiss-cpu installed, or no CUDA device)"
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, d), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = xb[rng.choice(n, QUERIES, replace=False)] + 0.05 * rng.standard_normal((QUERIES, d), dtype=np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    exact = fsearch.build_index(xb, "flat", gpu=True)
    _, truth = exact.search(xq, K)
    out = {"n": n, "d": d, "queries": QUERIES, "spec": fsearch.resolve_factory("auto", n, d)}
    for where, gpu in (("gpu", True), ("cpu", False)):
        progress(f"faiss {where}: building {out['spec']} over {n:,} vectors")
        start = time.perf_counter()
        index = fsearch.build_index(xb, "auto", gpu=gpu)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        _, found = index.search(xq, K)
        search_ms = (time.perf_counter() - start) * 1e3 / QUERIES
        recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))
        out[where] = {"on_gpu": fsearch.on_gpu(index), "build_s": round(build_s, 2),
                      "search_ms_per_query_batched": round(search_ms, 4), "recall_at_10": round(recall, 4)}
    return out, None


def report_md(report: dict) -> str:
    lines = [f"# GPU check ({report['created']})", "", f"Command: `{report['command']}`", "",
             f"GPUs: {report['gpus'] or 'none'}; libraries: {report['libraries']}", ""]
    if report["paths"]:
        lines += ["| path | min cos images | min cos golden (worst method) | image enc b1 ms | b32 ms | query b1 ms | "
                  "b32 ms |", "|---|---|---|---|---|---|---|"]
        for name, f in report["paths"].items():
            worst = min(f["min_cos_golden"].items(), key=lambda kv: kv[1])
            lines.append(f"| {name} | {f['min_cos_images']:.6f} | {worst[1]:.6f} ({worst[0]}) | "
                         f"{f['image_encoder_ms_b1']} | {f['image_encoder_ms_b32']} | {f['query_ms_b1']} | "
                         f"{f['query_ms_b32']} |")
    if report["faiss"]:
        fa = report["faiss"]
        lines += ["", f"faiss {fa['spec']} over {fa['n']:,} x {fa['d']} random unit vectors, {fa['queries']} queries:", "",
                  "| where | on GPU | build s | ms/query (batched) | recall@10 |", "|---|---|---|---|---|"]
        for where in ("gpu", "cpu"):
            r = fa[where]
            lines.append(f"| {where} | {r['on_gpu']} | {r['build_s']} | {r['search_ms_per_query_batched']} | "
                         f"{r['recall_at_10']} |")
    if report["skipped"]:
        lines += ["", "## Skipped (not measured, no figure claimed)", ""]
        lines += [f"- **{name}**: {why}" for name, why in report["skipped"].items()]
    return "\n".join(lines) + "\n"


def run(bundle: Path, n_images: int, faiss_n: int, out: Path, progress=print) -> dict:
    import sys

    from zscir_bench.machine import gpu_info, library_versions

    start = time.perf_counter()
    paths, skipped = check_paths(bundle, n_images, progress)
    faiss_report, faiss_skip = check_faiss(faiss_n, load_bundle(bundle, verify=False).embed_dim, progress) \
        if faiss_n else (None, "--faiss-n 0")
    if faiss_skip:
        skipped["faiss-gpu"] = faiss_skip
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(["gpu_check", *sys.argv[1:]]),
              "bundle": bundle.name, "images": n_images, "gpus": gpu_info(), "libraries": library_versions(),
              "paths": paths, "faiss": faiss_report, "skipped": skipped,
              "seconds": round(time.perf_counter() - start, 1)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "gpu_check.json", report)
    atomic_write_text(out / "gpu_check.md", report_md(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--faiss-n", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("results/gpu"))
    args = parser.parse_args(argv)
    report = run(args.bundle, args.images, args.faiss_n, args.out)
    print(report_md(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
