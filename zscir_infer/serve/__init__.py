"""`zscir-infer serve`: composed image retrieval as an HTTP service (FastAPI + uvicorn, the `[serve]` extra).

    from zscir_infer.serve import ServeConfig, create_app
    app = create_app(ServeConfig(bundle="zscir-out/bundle", gallery="zscir-out/gallery"))

`batching` batches requests per graph, `service` holds the loaded bundle and gallery (and reloads
them), `app` is the HTTP API and the search page, `cli` the command. Nothing here is imported by
`import zscir_infer` or `zscir-infer query`: the base install has no FastAPI.
"""

from __future__ import annotations

__all__ = ["ServeConfig", "Service", "create_app"]


def __getattr__(name: str):
    if name in ("ServeConfig", "Service"):
        from zscir_infer.serve import service

        return getattr(service, name)
    if name == "create_app":
        from zscir_infer.serve.app import create_app

        return create_app
    raise AttributeError(name)
