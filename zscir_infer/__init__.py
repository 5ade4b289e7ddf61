"""zscir_infer: the torch-free runtime of zscir (ONNX Runtime / TensorRT, numpy, Pillow, FAISS).

    from zscir_infer import QueryRequest, Runtime, Gallery, index_images, run_queries

    index_images("photos/", bundle="zscir-out/bundle", gallery="my-gallery")      # -> IndexSummary
    with Runtime("zscir-out/bundle") as rt, Gallery.open("my-gallery", bundle_id=rt.bundle_id) as g:
        [result] = run_queries(rt, g, [QueryRequest("photos/cat.jpg", "as a sketch")], k=5)
        xq = rt.encode_queries([("photos/cat.jpg", "as a sketch")])   # [1, D] float32, normalized

This package never imports torch, open_clip, zscir_train or zscir_export (a test enforces it): a
deployment installs only the runtime. The bundle written by `zscir-export` is its only input; the
contract it follows is `zscir_infer.contract`. Gallery and indexing (FAISS) are imported on first use.
"""

from zscir_infer.bundle import Bundle, BundleError, load_bundle
from zscir_infer.contract import METHODS, TemplateError
from zscir_infer.errors import ZscirError
from zscir_infer.runtime import Runtime

__version__ = "0.1.0"

_LAZY = {
    "Gallery": "zscir_infer.gallery",
    "GalleryError": "zscir_infer.gallery",
    "IndexSummary": "zscir_infer.indexing",
    "index_images": "zscir_infer.indexing",
    "QueryRequest": "zscir_infer.query",
    "QueryResult": "zscir_infer.query",
    "iter_queries": "zscir_infer.query",
    "run_queries": "zscir_infer.query",
}

__all__ = ["METHODS", "Bundle", "BundleError", "Runtime", "TemplateError",
           "ZscirError", "__version__", "load_bundle", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zscir_infer' has no attribute {name!r}")
