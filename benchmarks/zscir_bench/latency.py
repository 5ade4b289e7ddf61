"""`zscir-bench latency`: every stage of a composed query, per backend and batch, against the PyTorch
reference and the machine's matrix-multiply peak, all measured in one run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from zscir_bench import machine, roofline, samples
from zscir_bench.stages import STAGES, TORCH_TRIMMED, parse_backend
from zscir_bench.timing import Policy
from zscir_bench.worker import run_worker
from zscir_infer.bundle import load_bundle

DEFAULT_BATCHES = (1, 8, 32, 128)
DEFAULT_GALLERY = 10_000  # gallery vectors searched by the search and end-to-end stages
CPU_PRECISIONS = ("fp32", "fp16", "int8")
REFERENCE = "torch"
LATENCY_POLICY = Policy(warmup=1, min_reps=5, min_seconds=2.0, max_reps=200)
ROOFLINE_STAGES = ("image_encode", "query_encode", "text_encode")
PROFILE_BATCH = 32  # where the operator profile is taken (the roofline's batch)


def available_backends(bundle_dir: Path) -> tuple[list[str], dict[str, str]]:
    """(backends to run, {backend: why it is skipped}) for this bundle on this machine."""
    import onnxruntime as ort

    bundle = load_bundle(bundle_dir, verify=False)
    precisions = bundle.precisions("image_encoder")
    names = [REFERENCE, TORCH_TRIMMED] + [f"ort-{p}" for p in CPU_PRECISIONS if p in precisions]
    skipped = {f"ort-{p}": "not in the bundle (export with --fp16 / --int8)" for p in CPU_PRECISIONS
               if p not in precisions}
    try:
        import openvino  # noqa: F401

        names += [f"openvino-{p}" for p in CPU_PRECISIONS if p in precisions]
    except ImportError:
        skipped.update({f"openvino-{p}": "OpenVINO is not installed (the [openvino] extra)" for p in CPU_PRECISIONS})
    providers = ort.get_available_providers()
    for device, provider in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        for p in ("fp32", "fp16"):
            name = f"ort-{device}-{p}"
            if provider in providers and p in precisions:
                names.append(name)
            else:
                skipped[name] = f"onnxruntime {ort.__version__} has no {provider} here (providers: {providers})"
    engine_precisions = sorted({e.precision for e in bundle.engines})
    gpus = machine.gpu_info()
    for p in engine_precisions or ["fp16"]:
        if gpus and p in engine_precisions:
            names.append(f"trt-{p}")
        else:
            skipped[f"trt-{p}"] = "no GPU on this machine" if not gpus else "the bundle has no TensorRT engines"
    return names, skipped


def flops_of(reference) -> dict[str, int]:
    """FLOPs per item of the three encoders, from the backbone's open_clip config."""
    arch = {**reference.backbone.arch, "embed_dim": reference.backbone.embed_dim}
    phi = reference.query_encoder.phi if reference.query_encoder is not None else None
    phi_dims = (phi.embed_dim, phi.width, phi.hidden_dim) if phi is not None else None
    return {"image_encode": roofline.image_flops(arch), "text_encode": roofline.text_flops(arch),
            "query_encode": roofline.query_flops(arch, phi_dims)}


def ratios_to_reference(backends: dict, reference: str = REFERENCE) -> dict:
    """{backend: {stage: {batch: p50 / reference p50}}} (below 1: faster than PyTorch)."""
    ref = backends.get(reference)
    if ref is None:
        return {}
    out = {}
    for name, b in backends.items():
        if name == reference:
            continue
        out[name] = {
            stage: {batch: s["p50_ms"] / ref["stages"][stage][batch]["p50_ms"]
                    for batch, s in per_batch.items() if batch in ref["stages"].get(stage, {})}
            for stage, per_batch in b["stages"].items()
        }
    return out


def rooflines(backends: dict, flops: dict[str, int], peaks: dict) -> dict:
    """{backend: {stage: {batch: {gflop_per_item, achieved_gflops, percent_of_peak}}}}; int8 graphs are
    also compared with the int8 GEMM peak."""
    out = {}
    for name, b in backends.items():
        per_stage = {}
        for stage in ROOFLINE_STAGES:
            if stage not in b["stages"]:
                continue
            per_stage[stage] = {}
            for batch, s in b["stages"][stage].items():
                entry = roofline.roofline_entry(flops[stage], s["items_per_s"], peaks["fp32_peak_gflops"])
                if name.endswith("int8"):
                    entry["percent_of_int8_peak"] = 100.0 * entry["achieved_gflops"] / peaks["int8_peak_gops"]
                per_stage[stage][batch] = entry
        out[name] = per_stage
    return out


def run_latency(
    bundle_dir: Path,
    backends: Sequence[str] | None = None,
    batches: Sequence[int] = DEFAULT_BATCHES,
    *,
    threads: int,
    policy: Policy = LATENCY_POLICY,
    gallery_size: int = DEFAULT_GALLERY,
    checkpoint: Path | None = None,
    weights: str | None = None,
    stages: Sequence[str] = STAGES,
    peak_size: int = roofline.PEAK_GEMM_SIZE,
    int8_static: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """The latency results (JSON-ready) for one bundle; the PyTorch reference is always measured.

    Every backend runs in its own worker process (`latency_worker`), one after the other.
    """
    names, skipped = available_backends(bundle_dir)
    if backends is not None:
        for b in backends:
            parse_backend(b)  # raises for a malformed name
        names = [REFERENCE] + [b for b in backends if b in names and b != REFERENCE]
        skipped = {b: why for b, why in skipped.items() if b in backends}
    say = progress or (lambda _msg: None)
    say(f"matrix-multiply peak ({threads} threads)")
    peaks = roofline.measure_peaks(threads, n=peak_size)
    measured, reference, prompt_tokens = {}, {}, None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        samples.write_jpegs(folder / "images", max(batches))
        for name in names:
            request = {"backend": name, "bundle": str(bundle_dir), "batches": list(batches), "threads": threads,
                       "policy": asdict(policy), "gallery_size": gallery_size, "stages": list(stages),
                       "images": str(folder / "images"), "checkpoint": str(checkpoint) if checkpoint else None,
                       "weights": weights}
            result, why = run_worker("zscir_bench.latency_worker", request, folder, name, say,
                                     echo=lambda line, name=name: line.startswith(f"{name}: "))
            if result is None:
                if name == REFERENCE:
                    raise RuntimeError(f"The PyTorch reference could not be measured: {why}")
                skipped[name] = why
                continue
            if name == REFERENCE:
                reference = {"provenance": result.pop("reference"), "flops": result.pop("flops")}
            prompt_tokens = result.pop("prompt_tokens", None) or prompt_tokens
            measured[name] = result
    static = None
    if int8_static:
        from zscir_bench.static_int8 import compare_int8

        say("image encoder: static vs dynamic int8")
        static = compare_int8(bundle_dir, batches, threads, policy)
    from zscir_bench.op_profile import profile_bundle

    profile_batch = PROFILE_BATCH if PROFILE_BATCH in batches else max(batches)
    say(f"operator profile at batch {profile_batch}")
    profile = profile_bundle(bundle_dir, profile_batch, threads)
    return {
        "bundle": _bundle_json(load_bundle(bundle_dir, verify=False)),
        "reference": reference["provenance"],
        "threads": threads,
        "policy": asdict(policy),
        "batches": list(batches),
        "gallery_size": gallery_size,
        "inputs": {"images": f"{samples.PHOTO_SIZE[0]}x{samples.PHOTO_SIZE[1]} JPEG files (quality "
                             f"{samples.JPEG_QUALITY})", "texts": "short modification texts",
                   "prompt_tokens": prompt_tokens},
        "isolation": "each backend measured in a fresh process of its own, one after the other",
        "peaks": peaks,
        "flops": reference["flops"],
        "backends": measured,
        "skipped_backends": skipped,
        "ratios": ratios_to_reference(measured),
        "ratios_trimmed": ratios_to_reference(measured, TORCH_TRIMMED),
        "roofline": rooflines(measured, reference["flops"], peaks),
        "int8_static": static,
        "op_profile": profile,
    }


def _bundle_json(bundle) -> dict:
    m = bundle.manifest
    return {"name": bundle.path.name, "method": m["method"], "backbone": m["backbone"]["name"],
            "pretrained": m["backbone"].get("pretrained"), "embed_dim": m["embed_dim"], "width": m["width"],
            "image_size": m["preprocess"]["image_size"], "precisions": bundle.precisions("image_encoder"),
            "bundle_id": bundle.bundle_id}
