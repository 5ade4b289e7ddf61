"""`zscir-bench fusions`: ONNX Runtime's transformer fusions on a bundle's fp32 graphs, measured.

ONNX Runtime ships an offline optimizer for transformer graphs (`onnxruntime.transformers.optimizer`) that
fuses attention, layer norm (with the residual add: SkipLayerNormalization), GELU and bias into contrib
operators. Whether that helps a bundle is measured here, not assumed: for each encoder graph this writes
the optimizer's result (model type `clip`), counts what it fused, checks fp32 parity against the plain
graph on real inputs (cosine >= PARITY_COSINE, as the export validation asks), and times both at batch 1
and 32 in one process, interleaved call by call (`timing.measure_interleaved`), with the session options the runtime uses
(`zscir_infer.backends.ort.OrtSession`: every ORT graph optimization on, no spin-waiting). Token ids are cut
after the batch's last end-of-text token as the runtime cuts them.

The export adopts the fused graphs only where they are faster by FASTER_BY here and keep parity; the
report says which, and why.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from zscir_bench import samples
from zscir_bench.static_int8 import cosines
from zscir_bench.timing import Policy, measure_interleaved
from zscir_infer.contract import (
    IMAGE_ENCODER,
    IMAGE_FEATURES,
    PIXELS,
    QUERY_ENCODER,
    TEXT_ENCODER,
    TOKEN_IDS,
    fill_template,
)
from zscir_infer.runtime import Runtime

GRAPHS = (IMAGE_ENCODER, QUERY_ENCODER, TEXT_ENCODER)
MODEL_TYPE = "clip"
PARITY_COSINE = 0.99999
FASTER_BY = 0.03  # adopt a fused graph only when its p50 is at least 3% below the plain graph's
DEFAULT_BATCHES = (1, 32)
FUSIONS_POLICY = Policy(warmup=2, min_reps=10, min_seconds=3.0, max_reps=200)


def fuse(src: Path, dst: Path) -> dict[str, int]:
    """Write ORT's transformer-optimized graph of src to dst; return {fused operator: count} (non-zero)."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    quiet = logging.getLogger("onnxruntime.transformers")
    level, quiet.level = quiet.level, logging.ERROR
    try:  # num_heads/hidden_size 0: detected from the graph
        model = optimizer.optimize_model(str(src), model_type=MODEL_TYPE, num_heads=0, hidden_size=0,
                                         optimization_options=FusionOptions(MODEL_TYPE), opt_level=0, use_gpu=False)
    finally:
        quiet.level = level
    model.save_model_to_file(str(dst), use_external_data_format=False)
    return {op: int(n) for op, n in model.get_fused_operator_statistics().items() if n}


def feeds_for(rt: Runtime, graph: str, batch: int, folder: Path) -> dict[str, np.ndarray]:
    """Real inputs for one graph at one batch, prepared by the runtime: JPEG photos preprocessed, prompts
    (the template filled, for the query encoder) tokenized and trimmed."""
    if graph == IMAGE_ENCODER:
        return {PIXELS: rt.preprocess(samples.write_jpegs(folder, batch))}
    texts = samples.modification_texts(batch)
    if graph == QUERY_ENCODER:
        texts = [fill_template(rt.template(), t, rt.placeholder) for t in texts]
    ids = rt.trim_token_ids(graph, rt.token_ids(texts))
    if graph == TEXT_ENCODER:
        return {TOKEN_IDS: ids}
    features = np.random.default_rng(0).standard_normal((batch, rt.embed_dim), dtype=np.float32)
    return {IMAGE_FEATURES: features, TOKEN_IDS: ids}


def run_fusions(bundle_dir: Path, batches: Sequence[int] = DEFAULT_BATCHES, *, threads: int,
                policy: Policy = FUSIONS_POLICY, progress: Callable[[str], None] | None = None) -> dict:
    from zscir_infer.backends.ort import OrtSession

    say = progress or (lambda _msg: None)
    results = {}
    with tempfile.TemporaryDirectory() as tmp, Runtime(bundle_dir, threads=threads) as rt:
        bundle, folder = rt.bundle, Path(tmp)
        for graph in GRAPHS:
            spec = bundle.graphs.get((graph, "fp32"))
            if spec is None:
                continue
            say(f"{graph}: ORT transformer optimizer ({MODEL_TYPE})")
            plain_path = bundle.verified(spec.file)
            fused_path = folder / f"{graph}.fused.onnx"
            fused_ops = fuse(plain_path, fused_path)
            sessions = {name: OrtSession(path, threads=threads, disabled_optimizers=spec.ort_disabled_optimizers)
                        for name, path in (("plain", plain_path), ("fused", fused_path))}
            per_batch, cosine, sequence = {}, 1.0, {}
            for batch in batches:
                feeds = feeds_for(rt, graph, batch, folder / f"images-{batch}")
                if TOKEN_IDS in feeds:
                    sequence[str(batch)] = int(feeds[TOKEN_IDS].shape[1])
                outs = {name: next(iter(s.infer(feeds).values())) for name, s in sessions.items()}
                cosine = min(cosine, float(cosines(outs["plain"], outs["fused"]).min()))
                say(f"{graph}: plain vs fused at batch {batch}")
                stats = measure_interleaved({name: (lambda s=s, f=feeds: s.infer(f)) for name, s in sessions.items()},
                                            batch, policy)
                per_batch[str(batch)] = {name: st.to_dict() for name, st in stats.items()}
            for s in sessions.values():
                s.close()
            results[graph] = {"fused_ops": fused_ops, "min_cosine": cosine, "timings": per_batch,
                              "sequence": sequence or None}
            results[graph]["adopt"], results[graph]["why"] = decide(results[graph])
    import onnxruntime as ort

    return {"bundle": bundle.path.name, "bundle_id": bundle.bundle_id, "threads": threads, "batches": list(batches),
            "model_type": MODEL_TYPE, "onnxruntime": ort.__version__, "parity_cosine": PARITY_COSINE,
            "faster_by": FASTER_BY, "graphs": results}


def decide(result: dict) -> tuple[bool, str]:
    """(adopt the fused graph?, why): parity first, then faster by FASTER_BY at every batch measured."""
    if not result["fused_ops"]:
        return False, "the optimizer fused nothing"
    if result["min_cosine"] < PARITY_COSINE:
        return False, f"fp32 parity lost (min cosine {result['min_cosine']:.6f} < {PARITY_COSINE})"
    gains = {b: 1.0 - t["fused"]["p50_ms"] / t["plain"]["p50_ms"] for b, t in result["timings"].items()}
    if all(g >= FASTER_BY for g in gains.values()):
        return True, "faster at every batch: " + ", ".join(f"b{b} {100 * g:+.1f}%" for b, g in gains.items())
    return False, (f"not faster by {100 * FASTER_BY:.0f}%: "
                   + ", ".join(f"b{b} {100 * g:+.1f}%" for b, g in gains.items()))

