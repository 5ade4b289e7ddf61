"""Evaluation on CIRR, CIRCO, FashionIQ, GeneCIS and ImageNet-R in their official layouts and protocols.

`run_benchmark(Harness(encoder, key), "cirr", root)` runs one benchmark with any `QueryEncoder` (the
runtime on a bundle, or the PyTorch reference built by the caller: this package never imports torch);
the per-benchmark modules read the datasets and turn rankings into metrics and submission files,
`metrics` holds the numpy ranking and metric functions they share, and `world` reads the shapes world's
test split with its ground truth. `zscir-eval` (`cli`) is the command line.
"""

from zscir_eval.encoder import QueryEncoder
from zscir_eval.harness import (
    BENCHMARKS,
    EvalResult,
    Harness,
    MissingImagesError,
    run_benchmark,
    score_split,
    write_result,
)
from zscir_eval.splits import DatasetError, LayoutError
from zscir_eval.templates import BenchmarkTemplateError

__all__ = [
    "BENCHMARKS",
    "BenchmarkTemplateError",
    "DatasetError",
    "EvalResult",
    "Harness",
    "LayoutError",
    "MissingImagesError",
    "QueryEncoder",
    "run_benchmark",
    "score_split",
    "write_result",
]
