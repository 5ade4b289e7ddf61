"""Evaluation on CIRR, CIRCO, FashionIQ, GeneCIS and ImageNet-R in their official layouts and protocols.

`run_benchmark(Harness(encoder, key), "cirr", root)` runs one benchmark with any encoder that has the
runtime's interface; the per-benchmark modules read the datasets and turn rankings into metrics and
submission files, and `metrics` holds the numpy ranking and metric functions they share.
"""

from zscir_infer.eval.harness import (
    BENCHMARKS,
    EvalResult,
    Harness,
    MissingImagesError,
    run_benchmark,
    write_result,
)

__all__ = ["BENCHMARKS", "EvalResult", "Harness", "MissingImagesError", "run_benchmark", "write_result"]
