"""int8 graphs: ONNX Runtime's dynamic quantization (int8 weights, activations quantized per batch).

`quantize_dynamic` with QInt8 weights (DESIGN §8: 2.1-2.4x faster than fp32 on this CPU for ViT-B/32,
cosine 0.9998). For ONNX Runtime on CPU only: TensorRT needs explicit Q/DQ graphs, not these
MatMulInteger/DynamicQuantizeLinear ones, so no int8 engine is built from them.

Weights are quantized per output channel to 7 bits (`per_channel`, `reduce_range`): ONNX Runtime's
uint8 x int8 kernels can saturate their 16-bit intermediate sums with full-range weights (the reason its
documentation gives for reduce_range), and on random-weight text towers that alone cost cosine
0.95-0.99 against fp32; with both options it stays >= 0.997 (zscir-tiny, three seeds, ORT 1.32).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from zscir_export import graphs

# quantize_dynamic suggests its shape pre-processing on every call; it needs symbolic shape inference,
# which does not complete on these graphs, and dynamic quantization is validated without it.
PREPROCESS_HINT = "pre-processing before quantization"


class _DropHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return PREPROCESS_HINT not in record.getMessage()


@contextlib.contextmanager
def _without_preprocess_hint() -> Iterator[None]:
    hint = _DropHint()
    logging.getLogger().addFilter(hint)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(hint)


def quantize_to_int8(src: Path, dst: Path) -> None:
    """Write the dynamically quantized (int8 weights) version of the fp32 graph `src` to `dst`."""
    size = sum(f.stat().st_size for f in graphs.graph_files(src))
    with _without_preprocess_hint():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         use_external_data_format=size + graphs.EXTERNAL_DATA_MARGIN >= graphs.PROTOBUF_LIMIT)
    onnx.checker.check_model(str(dst))
