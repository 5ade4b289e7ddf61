"""`zscir-infer serve`: parse, check the extra is installed, run uvicorn."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Annotated

import typer

from zscir_infer.cli_style import (
    DEFAULT_BUNDLE,
    DEFAULT_GALLERY,
    Backend,
    BundleDir,
    Device,
    GalleryDir,
    Precision,
    Threads,
    command,
    err_console,
)
from zscir_infer.errors import InputError, UsageError

LOOPBACK = ("127.0.0.1", "::1", "localhost")
CONFIG_ENV = "ZSCIR_SERVE_CONFIG"  # the config of `--workers N` processes (each loads its own copy)
GRACEFUL_SHUTDOWN_S = 30


def register(app: typer.Typer) -> None:
    command(app, "serve")(serve)


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InputError(f"--token-file {path} cannot be read: {exc.strerror}.") from exc
    if len(token) < 16:
        raise InputError(f"--token-file {path}: the token must be at least 16 characters (it has {len(token)}).")
    return token


def serve(
    bundle: BundleDir = DEFAULT_BUNDLE,
    gallery: GalleryDir = DEFAULT_GALLERY,
    host: Annotated[str, typer.Option("--host", help="Address to bind; loopback unless you mean otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free one).")] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes, each with its own copy of the "
                                         "bundle and gallery (read-only when more than 1).")] = 1,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Requests encoded together per graph "
                                           "(1: no batching).")] = 32,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0.0, help="How long a batch waits for more "
                                               "requests after its first.")] = 5.0,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="Requests waiting before 503.")] = 256,
    request_timeout: Annotated[float, typer.Option("--request-timeout", min=0.1, help="Seconds before 504.")] = 30.0,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.01, help="Largest request body.")] = 20.0,
    writable: Annotated[bool, typer.Option("--writable", help="Allow POST /v1/gallery/images (holds the "
                                           "gallery's writer lock).")] = False,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="A file holding the bearer token for "
                                                    "/admin/reload and the write endpoints.")] = None,
    examples: Annotated[Path | None, typer.Option("--examples", help="A query batch file (JSONL/CSV with "
                                                  "reference, text, targets) offered on the page.")] = None,
    backend: Backend = "ort",
    device: Device = "cpu",
    precision: Precision = "fp32",
    threads: Threads = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level.")] = "info",
) -> None:
    """Serve composed queries over HTTP: a search page at /, the API under /v1, docs at /docs."""
    try:
        import uvicorn

        from zscir_infer.serve import ServeConfig, create_app
    except ImportError as exc:
        raise UsageError(f"The server needs the [serve] extra ({exc.name} is missing): pip install 'zscir[serve]'.") from exc
    if workers > 1 and writable:
        raise UsageError("--writable needs --workers 1: a gallery has one writer.")
    for what, path in (("bundle", bundle), ("gallery", gallery)):
        if not path.is_dir():
            raise InputError(f"The {what} {path} is not a directory.")
    settings = dict(bundle=str(bundle), gallery=str(gallery), backend=backend, device=device, precision=precision,
                    threads=threads, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                    request_timeout_s=request_timeout, max_upload_bytes=int(max_upload_mb * (1 << 20)),
                    writable=writable, token=_read_token(token_file) if token_file else None,
                    examples=str(examples) if examples else None)
    if host not in LOOPBACK:
        err_console.print(f"[yellow]Note:[/yellow] listening on {host}: other machines can reach this server"
                          + ("" if token_file else "; its write and admin endpoints are off without --token-file"))
    # uvicorn drains in-flight requests on SIGTERM, restores the handler it found and raises the signal
    # again; a handler that does nothing makes that drained shutdown exit 0, as orchestrators expect.
    signal.signal(signal.SIGTERM, _drained)
    options = dict(host=host, port=port, log_level=log_level, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    if workers == 1:
        uvicorn.run(create_app(ServeConfig(**settings)), **options)
    else:
        os.environ[CONFIG_ENV] = json.dumps(settings)
        uvicorn.run("zscir_infer.serve.cli:app_from_env", factory=True, workers=workers, **options)


def _drained(signum, frame) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do."""


def app_from_env():
    """The app of one `--workers` process, from the config the parent left in the environment."""
    from zscir_infer.serve import ServeConfig, create_app

    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))
