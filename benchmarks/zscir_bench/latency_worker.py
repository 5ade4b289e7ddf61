"""One backend's stage timings in a process of its own: `python -m zscir_bench.latency_worker REQUEST RESULT`.

Each backend runs in a fresh process so that it is measured as it is deployed (the runtime's process
never imports torch, and no other library's thread pool is alive beside it), and so that a backend that
crashes (a segfault in a provider) costs its own figures only. REQUEST and RESULT are JSON files.
"""

from __future__ import annotations

import sys
from pathlib import Path

from zscir_bench import samples
from zscir_bench.search_bench import clustered_vectors
from zscir_bench.stages import TORCH_TRIMMED, RuntimeStages, TorchStages, parse_backend, run_stages
from zscir_bench.timing import Policy
from zscir_bench.worker import progress_to_stderr, serve


def measure_backend(request: dict) -> dict:
    spec = parse_backend(request["backend"])
    bundle = Path(request["bundle"])
    batches, threads = request["batches"], request["threads"]
    paths = sorted(Path(request["images"]).glob("*.jpg"))[: max(batches)]
    texts = samples.modification_texts(max(batches))
    extra = {}
    if spec.backend == "torch":
        from zscir_bench.latency import flops_of
        from zscir_bench.reference_model import reference_for_bundle

        reference, provenance = reference_for_bundle(bundle, request.get("checkpoint"), request.get("weights"))
        xb, _ = clustered_vectors(request["gallery_size"], reference.embed_dim)
        adapter = TorchStages(reference, xb, threads, trim=spec.name == TORCH_TRIMMED)
        prompts = adapter.prompts(texts)
        tokens = adapter.prompt_tokens(prompts)
        extra = {"prompt_tokens": {"min": min(tokens), "max": max(tokens), "context": int(reference.backbone.context_length)}}
        if spec.name != TORCH_TRIMMED:
            extra.update(reference=provenance, flops=flops_of(reference))
    else:
        from zscir_infer.bundle import load_bundle

        xb, _ = clustered_vectors(request["gallery_size"], load_bundle(bundle, verify=False).embed_dim)
        adapter = RuntimeStages(bundle, spec, xb, threads, max(batches))

    results = run_stages(adapter, paths, texts, batches, Policy(**request["policy"]), request["stages"],
                         progress_to_stderr)
    return {
        "spec": {"backend": spec.backend, "device": spec.device, "precision": spec.precision},
        "providers": adapter.providers,
        "method": adapter.method,
        "stages": {stage: {str(b): s.to_dict() for b, s in per_batch.items()} for stage, per_batch in results.items()},
        **extra,
    }


if __name__ == "__main__":
    serve(sys.argv[1:], measure_backend)
