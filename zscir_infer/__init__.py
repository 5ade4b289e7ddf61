"""zscir_infer: the torch-free runtime of zscir (ONNX Runtime / TensorRT, numpy, Pillow, FAISS).

    from zscir_infer import Runtime
    rt = Runtime("zscir-out/bundle")                        # load_bundle + ONNX Runtime on CPU
    xq = rt.encode_queries([("cat.jpg", "as a sketch")])    # [1, D] float32, normalized

This package never imports torch, open_clip, zscir_train or zscir_export (a test enforces it): a
deployment installs only the runtime. The bundle written by `zscir-export` is its only input.
"""

from zscir_infer.bundle import Bundle, BundleError, load_bundle
from zscir_infer.runtime import METHODS, Runtime, TemplateError

__version__ = "0.1.0"

__all__ = ["METHODS", "Bundle", "BundleError", "Runtime", "TemplateError", "__version__", "load_bundle"]
