"""The HTTP API of `zscir-infer serve` (FastAPI): search, embeddings, gallery, health, metrics, reload.

Every error is JSON, `{"error": {"kind": ..., "message": ...}}`, with a 4xx status for anything the
client can fix (bad image 415, too large 413, unknown name 404, bad value 422, missing token 401/403,
full queue 503 with Retry-After, timeout 504); a 500 is a bug. See the README's "Serving" section.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import mimetypes
import re
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from zscir_infer.atomic import atomic_path
from zscir_infer.contract import METHODS, TemplateError
from zscir_infer.errors import InputError, ZscirError
from zscir_infer.gallery import GalleryBundleMismatch, GalleryError
from zscir_infer.preprocess import ImageLoadError, ImageTooLargeError
from zscir_infer.query import QueryError, read_batch
from zscir_infer.runtime import normalize
from zscir_infer.serve.batching import Overloaded
from zscir_infer.serve.metrics import Metrics
from zscir_infer.serve.service import (
    Add,
    Generation,
    Listing,
    Lookup,
    Search,
    ServeConfig,
    Service,
)
from zscir_infer.serve.service import (
    Query as ComposedQuery,
)

API_VERSION = "v1"
RETRY_AFTER_S = 1
MAX_EXAMPLES = 500
MAX_NAME_LENGTH = 512
UPLOADS = "uploads"  # inside the gallery folder: images added through POST /v1/gallery/images
SAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")
BODY_METHODS = ("POST", "PUT", "PATCH")


class ApiError(Exception):
    """An error answered as JSON with its status; the message says what was wrong and what to do."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"kind": kind, "message": message}}, status_code=status, headers=headers)


def _api_error(exc: BaseException) -> ApiError:
    """Library errors -> HTTP statuses."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, Overloaded):
        return ApiError(503, "overloaded", f"The server is busy ({exc}); retry in {RETRY_AFTER_S} s.",
                        {"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, ImageTooLargeError):
        return ApiError(413, "image_too_large", str(exc))
    if isinstance(exc, ImageLoadError):
        return ApiError(415, "not_an_image", str(exc))
    if isinstance(exc, GalleryBundleMismatch):
        return ApiError(409, "bundle_mismatch", str(exc))
    if isinstance(exc, GalleryError | InputError | TemplateError | QueryError | ZscirError):
        return ApiError(422, "bad_value", str(exc))
    raise exc


# --- request and response bodies (the OpenAPI schema) -----------------------------------------------------------
class Hit(BaseModel):
    rank: int
    score: float
    id: int
    name: str
    url: str
    target: bool | None = Field(None, description="Whether the example query lists this item as a target.")


class SearchResponse(BaseModel):
    method: str
    k: int
    text: str
    reference: str
    results: list[Hit]
    warnings: list[str] = []
    timings_ms: dict[str, float] = {}


class ImageInput(BaseModel):
    name: str | None = Field(None, description="The name of a gallery image.")
    base64: str | None = Field(None, description="The image file's bytes, base64-encoded.")


class QueryInput(BaseModel):
    image: ImageInput | None = None
    text: str = ""


class EmbeddingsRequest(BaseModel):
    texts: list[str] | None = Field(None, description="Raw texts -> text embeddings.")
    images: list[ImageInput] | None = Field(None, description="Images -> image embeddings.")
    queries: list[QueryInput] | None = Field(None, description="(image, text) -> composed query embeddings.")
    method: str | None = Field(None, description=f"For queries: one of {', '.join(METHODS)}.")
    template: str | None = None
    alpha: float | None = None
    encoding: Literal["float", "base64"] = Field(
        "float", description="float: JSON lists; base64: each vector as little-endian float32 bytes.")


class EmbeddingsResponse(BaseModel):
    kind: Literal["text", "image", "query"]
    dim: int
    encoding: Literal["float", "base64"]
    data: list[list[float]] | list[str]
    warnings: list[str] = []


class AddedImage(BaseModel):
    id: int
    name: str
    url: str


class AddResponse(BaseModel):
    added: list[AddedImage]
    count: int
    durable: bool = Field(description="True: the items are committed to disk and survive a crash.")


class GalleryListing(BaseModel):
    total: int
    offset: int
    items: list[dict[str, str | int]]


class ReloadRequest(BaseModel):
    bundle: str | None = None
    gallery: str | None = None


class Example(BaseModel):
    id: str | None
    reference: str
    text: str
    targets: list[str] | None


def image_url(name: str) -> str:
    return f"/{API_VERSION}/gallery/images/{quote(name, safe='/')}"


def _check_name(name: str, what: str) -> str:
    if not name or len(name) > MAX_NAME_LENGTH or any(ord(c) < 32 for c in name):
        raise ApiError(422, "bad_value", f"{what} {name[:40]!r} is not a valid name (1 to {MAX_NAME_LENGTH} "
                                         "printable characters).")
    return name


# --- the app -----------------------------------------------------------------------------------------------------
def create_app(config: ServeConfig, service: Service | None = None) -> FastAPI:
    """The FastAPI app for config; the bundle and gallery load now (so the app is ready when returned)."""
    service = service or Service(config)
    metrics: Metrics = service.metrics
    examples = _read_examples(config.examples)
    page = (resources.files("zscir_infer.serve") / "static" / "index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()  # uvicorn has drained in-flight requests by now (SIGTERM)

    app = FastAPI(title="zscir", version=API_VERSION, lifespan=lifespan,
                  description="Zero-shot composed image retrieval: a reference image and a text saying how to "
                              "change it -> the gallery images that match.")
    app.state.service = service

    # --- errors as JSON ----------------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return error_response(exc.status, exc.kind, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return error_response(422, "bad_request", f"The request is not valid: {problems}.")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, "http", str(exc.detail), getattr(exc, "headers", None))

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        start = time.perf_counter()
        if request.method in BODY_METHODS:
            length = request.headers.get("content-length")
            if length is None:
                response = error_response(411, "length_required", "Send a Content-Length header with the body.")
            elif not length.isdigit() or int(length) > config.max_upload_bytes:
                response = error_response(413, "too_large", f"The body is {length} bytes; the limit is "
                                          f"{config.max_upload_bytes:,} (--max-upload-mb).")
            else:
                response = await call_next(request)
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        if response.status_code >= 400:
            metrics.errors.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    async def guarded(coro_fn, *args):
        """Run a request on the current generation: bounded, timed, errors mapped to statuses."""
        if service.in_flight >= config.max_queue:
            raise _api_error(Overloaded(f"{config.max_queue} requests in flight"))
        try:
            with service.use() as generation:
                return await asyncio.wait_for(coro_fn(generation, *args), config.request_timeout_s)
        except TimeoutError:
            raise ApiError(504, "timeout", f"The request took longer than {config.request_timeout_s} s "
                                           "(--request-timeout); retry, or send fewer items.") from None
        except ApiError:
            raise
        except Exception as exc:
            raise _api_error(exc) from exc

    def require_token(request: Request, always: bool) -> None:
        if config.token is None:
            if always:
                raise ApiError(403, "forbidden", "Admin endpoints are off: start the server with --token-file.")
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "unauthorized", "Send the server's token: Authorization: Bearer TOKEN.",
                           {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), config.token.encode()):
            raise ApiError(403, "forbidden", "The bearer token is not this server's.")

    def write_access(request: Request) -> None:
        require_token(request, always=False)

    def admin_access(request: Request) -> None:
        require_token(request, always=True)

    # --- pages and health --------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index_page():
        return HTMLResponse(page)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "alive"}

    @app.get("/readyz", tags=["health"])
    async def readyz():
        """The bundle and gallery are loaded and searches are answered."""
        generation = service.current
        if generation.gallery is None or generation.gallery.gallery is None:
            return error_response(503, "not_ready", "The bundle or gallery is not loaded.")
        return {"status": "ready", "bundle_id": generation.runtime.bundle_id, "gallery_count": generation.gallery.count}

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def prometheus_metrics():
        """Prometheus text format."""
        for stage, depth in service.current.queue_depths().items():
            metrics.queue_depth.labels(stage).set(depth)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get(f"/{API_VERSION}/info", tags=["search"])
    async def info() -> dict:
        """What this server serves: the bundle's methods and defaults, the gallery's size, the limits."""
        g = service.current
        bundle = g.runtime.bundle
        methods = [m for m in METHODS if m != "phi" or bundle.has_phi]
        return {"bundle_id": bundle.bundle_id, "bundle": bundle.path.name, "source": bundle.method,
                "methods": methods, "default_method": bundle.default_method, "placeholder": bundle.placeholder,
                "templates": bundle.templates, "slerp_alpha": bundle.slerp_alpha, "embed_dim": bundle.embed_dim,
                "gallery_count": g.gallery.count, "max_k": config.max_k, "max_batch": config.max_batch,
                "writable": config.writable, "examples": len(examples)}

    @app.get(f"/{API_VERSION}/examples", tags=["search"])
    async def list_examples() -> list[Example]:
        """Example queries (--examples FILE), with their targets, for the page."""
        return examples

    # --- search ------------------------------------------------------------------------------------------------
    @app.post(f"/{API_VERSION}/search", tags=["search"], response_model=SearchResponse)
    async def search(
        text: Annotated[str, Form(description="How to change the reference, e.g. 'as origami'.")] = "",
        image: Annotated[UploadFile | None, File(description="The reference image (or give reference).")] = None,
        reference: Annotated[str | None, Form(description="The name of a gallery image as reference.")] = None,
        k: Annotated[int, Form(description="Results to return.")] = 10,
        method: Annotated[str | None, Form(description=f"One of {', '.join(METHODS)}; default the bundle's.")] = None,
        alpha: Annotated[float | None, Form(description="slerp's text weight in [0, 1].")] = None,
        template: Annotated[str | None, Form(description="phi's prompt template or a bundle template name.")] = None,
        exclude_ref: Annotated[bool, Form(description="Leave the reference out of the results.")] = False,
        filter: Annotated[str | None, Form(description="Milvus-style filter over name and path.")] = None,
        example: Annotated[str | None, Form(description="An example's id: its targets are marked.")] = None,
    ) -> SearchResponse:
        """A composed query: the reference (uploaded, or a gallery image's name) changed as the text says."""
        if not 1 <= k <= config.max_k:
            raise ApiError(422, "bad_value", f"k must be between 1 and {config.max_k}, got {k}.")
        upload = await _read_upload(image, config) if image is not None and image.filename else None
        if (upload is None) == (not reference):
            raise ApiError(422, "bad_value", "Give exactly one reference: an uploaded image (field 'image') or the "
                                             "name of a gallery image (field 'reference').")
        targets = _example_targets(examples, example)
        return await guarded(_search, upload, reference, text, k, method, alpha, template, exclude_ref, filter,
                             targets)

    async def _search(g: Generation, upload, reference, text, k, method, alpha, template, exclude_ref, filter,
                      targets) -> SearchResponse:
        timings: dict[str, float] = {}
        method = method or g.runtime.default_method
        g.runtime.check_method(method, alpha)
        q = ComposedQuery(None, text, method, template, alpha)
        if method != "text":
            t0 = time.perf_counter()
            q.pixels = await _pixels(g, upload, reference)
            timings["decode"] = (time.perf_counter() - t0) * 1e3
        elif reference is not None:
            await _gallery_item(g, reference)  # an unknown name is still an error
        t0 = time.perf_counter()
        vector, v_img = await g.encode(q)
        timings["encode"] = (time.perf_counter() - t0) * 1e3
        job = Search(vector, k, filter)
        if exclude_ref:
            if reference is not None:
                job.exclude_name = reference
            elif v_img is not None:
                job.exclude_like = normalize(v_img)
        t0 = time.perf_counter()
        hits = await g.gallery.submit(job)
        if isinstance(hits, BaseException):
            raise hits
        timings["search"] = (time.perf_counter() - t0) * 1e3
        return SearchResponse(
            method=method, k=k, text=text, reference=reference or f"upload:{upload[1]}", warnings=q.warnings,
            timings_ms={s: round(v, 3) for s, v in timings.items()},
            results=[Hit(rank=h.rank, score=h.score, id=h.id, name=h.name, url=image_url(h.name),
                         target=None if targets is None else h.name in targets) for h in hits])

    # --- embeddings --------------------------------------------------------------------------------------------
    @app.post(f"/{API_VERSION}/embeddings", tags=["embeddings"], response_model=EmbeddingsResponse)
    async def embeddings(body: EmbeddingsRequest) -> EmbeddingsResponse:
        """Unit vectors of texts, images or composed queries, for clients that keep their own index."""
        given = [n for n in ("texts", "images", "queries") if getattr(body, n) is not None]
        if len(given) != 1:
            raise ApiError(422, "bad_value", "Give exactly one of 'texts', 'images' or 'queries'.")
        items = getattr(body, given[0])
        if not 1 <= len(items) <= config.max_items:
            raise ApiError(422, "bad_value", f"'{given[0]}' must hold 1 to {config.max_items} items, got {len(items)}.")
        return await guarded(_embeddings, body, given[0])

    async def _embeddings(g: Generation, body: EmbeddingsRequest, what: str) -> EmbeddingsResponse:
        warnings: list[str] = []
        if what == "texts":
            rows = await asyncio.gather(*(g.text_features(t, warnings) for t in body.texts))
            vectors, kind = normalize(np.stack(rows)), "text"
        elif what == "images":
            pixels = await asyncio.gather(*(_input_pixels(g, im, f"images[{i}]") for i, im in enumerate(body.images)))
            rows = await asyncio.gather(*(g.image_features(p) for p in pixels))
            vectors, kind = normalize(np.stack(rows)), "image"
        else:
            method = body.method or g.runtime.default_method
            g.runtime.check_method(method, body.alpha)

            async def one(i: int, item: QueryInput) -> np.ndarray:
                if method != "text" and item.image is None:
                    raise ApiError(422, "bad_value", f"queries[{i}] needs an image for method {method!r}.")
                pixels = await _input_pixels(g, item.image, f"queries[{i}].image") if method != "text" else None
                q = ComposedQuery(pixels, item.text, method, body.template, body.alpha, warnings)
                return (await g.encode(q))[0]

            vectors, kind = np.stack(await asyncio.gather(*(one(i, q) for i, q in enumerate(body.queries)))), "query"
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        data = ([base64.b64encode(row.tobytes()).decode("ascii") for row in vectors] if body.encoding == "base64"
                else vectors.tolist())
        return EmbeddingsResponse(kind=kind, dim=int(vectors.shape[1]), encoding=body.encoding, data=data,
                                  warnings=warnings)

    # --- gallery -----------------------------------------------------------------------------------------------
    @app.get(f"/{API_VERSION}/gallery/images", tags=["gallery"], response_model=GalleryListing)
    async def gallery_listing(
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 60,
        prefix: str = "",
    ) -> GalleryListing:
        """Gallery image names (sorted), a page at a time, for the page's reference picker."""
        async def run(g: Generation):
            total, items = await g.gallery.submit(Listing(offset, limit, prefix))
            return GalleryListing(total=total, offset=offset, items=[
                {"id": it.id, "name": it.name, "url": image_url(it.name)} for it in items])
        return await guarded(run)

    @app.get(f"/{API_VERSION}/gallery/images/{{name:path}}", tags=["gallery"], response_class=FileResponse)
    async def gallery_image(name: str):
        """The image file of a gallery item (only gallery items: the name is looked up, never joined to a path)."""
        async def run(g: Generation):
            item = await _gallery_item(g, name)
            path = Path(item.path)
            if not path.is_file():
                raise ApiError(404, "file_gone", f"Gallery item {name!r} is listed but its file is gone.")
            media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=3600"})
        return await guarded(run)

    @app.post(f"/{API_VERSION}/gallery/images", tags=["gallery"], response_model=AddResponse,
              dependencies=[Depends(write_access)])
    async def add_images(
        images: Annotated[list[UploadFile], File(description="Image files to add.")],
        names: Annotated[list[str] | None, Form(description="Gallery names, one per image (default: "
                                                            "uploads/FILENAME).")] = None,
    ) -> AddResponse:
        """Add uploaded images to the gallery; durable once answered (a crash never half-adds an item)."""
        if not config.writable:
            raise ApiError(409, "read_only", "This server's gallery is read-only: start it with --writable "
                                             "(one writer per gallery).")
        if not images or not 1 <= len(images) <= config.max_items:
            raise ApiError(422, "bad_value", f"Send 1 to {config.max_items} images in field 'images'.")
        if names is not None and len(names) != len(images):
            raise ApiError(422, "bad_value", f"{len(names)} names for {len(images)} images: give one name per image.")
        uploads = [await _read_upload(im, config) for im in images]
        chosen = [_check_name(n, "Name") for n in names] if names else [
            f"{UPLOADS}/{SAFE_FILENAME.sub('_', Path(fn).name) or 'image'}" for _, fn in uploads]
        if len(set(chosen)) != len(chosen):
            raise ApiError(422, "bad_value", "Two uploaded images would get the same name; give distinct names.")
        return await guarded(_add, uploads, chosen)

    async def _add(g: Generation, uploads: list[tuple[bytes, str]], names: list[str]) -> AddResponse:
        present = await g.gallery.submit(Lookup(names))
        if present:
            raise ApiError(409, "exists", f"The gallery already has an image named {sorted(present)[0]!r}.")
        pixels = await asyncio.gather(*(run_in_threadpool(g.decode, data) for data, _ in uploads))
        rows = await asyncio.gather(*(g.image_features(p) for p in pixels))
        folder = Path(g.gallery.root) / UPLOADS
        paths = []
        try:
            for data, fn in uploads:  # 1. the files, written atomically; 2. the items, in one commit
                digest = hashlib.sha256(data).hexdigest()[:16]
                path = folder / f"{digest}-{SAFE_FILENAME.sub('_', Path(fn).name) or 'image'}"
                if not path.exists():
                    await run_in_threadpool(_write_file, path, data)
                paths.append(str(path.resolve()))
            ids = await g.gallery.submit(Add(names, paths, normalize(np.stack(rows))))
            if isinstance(ids, BaseException):
                raise ids
        except GalleryError as exc:
            raise ApiError(409, "exists", str(exc)) from exc
        return AddResponse(added=[AddedImage(id=int(i), name=n, url=image_url(n)) for i, n in zip(ids, names, strict=True)],
                           count=g.gallery.count, durable=True)

    # --- admin -------------------------------------------------------------------------------------------------
    @app.post("/admin/reload", tags=["admin"], dependencies=[Depends(admin_access)])
    async def reload(body: ReloadRequest | None = None) -> dict:
        """Load a new bundle and/or gallery (default: the same paths again) and swap it in; in-flight requests
        finish on the old one."""
        body = body or ReloadRequest()
        try:
            new = await run_in_threadpool(service.reload, body.bundle, body.gallery)
        except Exception as exc:
            raise _api_error(exc) from exc
        return {"status": "reloaded", "bundle_id": new.runtime.bundle_id, "gallery_count": new.gallery.count}

    return app


# --- helpers -----------------------------------------------------------------------------------------------------
def _write_file(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


async def _read_upload(upload: UploadFile, config: ServeConfig) -> tuple[bytes, str]:
    data = await upload.read(config.max_upload_bytes + 1)
    name = upload.filename or "upload"
    if len(data) > config.max_upload_bytes:
        raise ApiError(413, "too_large", f"{name} is larger than {config.max_upload_bytes:,} bytes (--max-upload-mb).")
    if not data:
        raise ApiError(422, "bad_value", f"The uploaded file {name!r} is empty.")
    return data, name


async def _gallery_item(g: Generation, name: str):
    found = await g.gallery.submit(Lookup([name]))
    if isinstance(found, BaseException):
        raise found
    if name not in found:
        raise ApiError(404, "unknown_name", f"The gallery has no image named {name!r}; "
                                            f"see GET /{API_VERSION}/gallery/images.")
    return found[name]


async def _pixels(g: Generation, upload: tuple[bytes, str] | None, reference: str | None) -> np.ndarray:
    if upload is not None:
        return await run_in_threadpool(g.decode, upload[0])
    item = await _gallery_item(g, reference)
    return await run_in_threadpool(g.decode, item.path)


async def _input_pixels(g: Generation, image: ImageInput, where: str) -> np.ndarray:
    if (image.name is None) == (image.base64 is None):
        raise ApiError(422, "bad_value", f"{where}: give exactly one of 'name' (a gallery image) or 'base64'.")
    if image.name is not None:
        return await _pixels(g, None, image.name)
    try:
        data = base64.b64decode(image.base64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(422, "bad_value", f"{where}.base64 is not valid base64 ({exc}).") from exc
    if not data:
        raise ApiError(422, "bad_value", f"{where}.base64 holds no bytes.")
    return await _pixels(g, (data, where), None)


def _read_examples(path: Path | None) -> list[Example]:
    if path is None:
        return []
    try:
        requests = read_batch(path)[:MAX_EXAMPLES]
    except QueryError as exc:
        raise InputError(f"--examples: {exc}") from exc
    return [Example(id=r.id if r.id is not None else str(i), reference=r.reference, text=r.text, targets=r.targets)
            for i, r in enumerate(requests)]


def _example_targets(examples: list[Example], example: str | None) -> set[str] | None:
    if example is None:
        return None
    for e in examples:
        if e.id == example:
            return set(e.targets or ())
    raise ApiError(404, "unknown_example", f"No example with id {example!r}; see GET /{API_VERSION}/examples.")
