"""Where the time goes inside a graph: ONNX Runtime's own profiler, summed per operator type.

A roofline says how far a graph is from the GEMM peak; this says why: the share of MatMul/Gemm (the
part that can approach the peak) against LayerNorm, Softmax, GELU, reshapes, quantize/dequantize and
the rest, each of which runs far below it.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from zscir_bench import samples
from zscir_infer.bundle import load_bundle
from zscir_infer.contract import fill_template
from zscir_infer.preprocess import load_image, preprocess
from zscir_infer.tokenizer import ClipTokenizer

PROFILE_RUNS = 5
KERNEL_SUFFIX = "_kernel_time"
GEMM_OPS = frozenset({"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "Conv", "QLinearConv",
                      "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "Attention",
                      "MultiHeadAttention"})


def kernel_times(trace: list[dict]) -> tuple[dict[str, float], int]:
    """(total microseconds per operator type, runs counted) in an ONNX Runtime profile, node kernel
    events only; the first run (allocations, kernel selection) is left out."""
    run_ends = sorted(e["ts"] + e["dur"] for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run")
    warm_end = run_ends[0] if len(run_ends) > 1 else -1
    totals: dict[str, float] = defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith(KERNEL_SUFFIX) and event["ts"] > warm_end:
            totals[event["args"]["op_name"]] += float(event["dur"])
    return dict(totals), max(1, len(run_ends) - 1)


def summarize_ops(totals_us: dict[str, float], runs: int) -> dict:
    """{op: {ms_per_run, share}} sorted by time, and the share spent in GEMM-like kernels."""
    total = sum(totals_us.values()) or 1.0
    ops = {op: {"ms_per_run": us / runs / 1e3, "share": us / total}
           for op, us in sorted(totals_us.items(), key=lambda kv: -kv[1])}
    gemm = sum(v["share"] for op, v in ops.items() if op in GEMM_OPS)
    return {"ops": ops, "gemm_share": gemm, "kernel_ms_per_run": total / runs / 1e3}


def profile_graph(path: Path, feeds: dict[str, np.ndarray], threads: int, runs: int = PROFILE_RUNS,
                  disabled_optimizers: tuple[str, ...] = ()) -> dict:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(disabled_optimizers))
        for _ in range(runs + 1):  # + the warm-up run, left out of the sums
            session.run(None, feeds)
        trace = json.loads(Path(session.end_profiling()).read_text())
    return summarize_ops(*kernel_times(trace))


def profile_bundle(bundle_dir: Path, batch: int, threads: int) -> dict:
    """{graph/precision: op summary} for the image and query encoders at `batch` (fp32 and int8)."""
    bundle = load_bundle(bundle_dir)
    with tempfile.TemporaryDirectory() as tmp:
        pixels = preprocess([load_image(p) for p in samples.write_jpegs(Path(tmp), batch)], bundle.preprocess)
    tokenizer = ClipTokenizer.from_file(bundle.verified(bundle.tokenizer_file), bundle.context_length)
    template = bundle.templates.get("default", "{caption}")
    prompts = [fill_template(template, t, bundle.placeholder) for t in samples.modification_texts(batch)]
    features = np.random.default_rng(0).standard_normal((batch, bundle.embed_dim), dtype=np.float32)
    feeds = {"image_encoder": {"pixels": pixels},
             "query_encoder": {"image_features": features, "token_ids": tokenizer(prompts, dtype=np.int32)}}
    out = {}
    for (graph, precision), spec in sorted(bundle.graphs.items()):
        if graph in feeds and precision in ("fp32", "int8"):
            out[f"{graph}/{precision}"] = profile_graph(bundle.verified(spec.file), feeds[graph], threads,
                                                        disabled_optimizers=spec.ort_disabled_optimizers)
    return {"batch": batch, "graphs": out}
