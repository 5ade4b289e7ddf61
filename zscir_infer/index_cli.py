"""`zscir-infer index`: build, extend, resume or re-tune a gallery.

    zscir-infer index photos/ --bundle zscir-out/bundle --out zscir-out/gallery   # a folder, recursively
    zscir-infer index more.txt --out zscir-out/gallery --add                      # another source
    zscir-infer index cirr/image_splits/split.rc2.val.json --out galleries/cirr-val
    zscir-infer index --out zscir-out/gallery --rebuild --index hnsw --ef-search 128  # no re-encoding

Re-running an interrupted command resumes it: images already committed are skipped, the rest are
encoded, and the index is rebuilt from the stored features. Bad files are reported and skipped.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from zscir_infer.backends import BackendError
from zscir_infer.bundle import BundleError
from zscir_infer.gallery import METADATA, Gallery, GalleryError, add_images, plan_additions
from zscir_infer.preprocess import DEFAULT_MAX_PIXELS
from zscir_infer.runtime import DEFAULT_BATCH_SIZE, Runtime
from zscir_infer.search import NAMED_SPECS, IndexSpecError, check_search_params
from zscir_infer.sources import IMAGE_EXTENSIONS, SourceError, SourceListing, list_images

DEFAULT_BUNDLE = Path("zscir-out/bundle")
DEFAULT_GALLERY = Path("zscir-out/gallery")
MAX_DEFAULT_WORKERS = 8
BAD_FILES_SHOWN = 20
EXIT_ERROR, EXIT_INTERRUPTED = 1, 130

console = Console(highlight=False, soft_wrap=True)  # soft wrap: long paths stay on one line in pipes
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

BundleDir = Annotated[
    Path, typer.Option("--bundle", "-b", envvar="ZSCIR_BUNDLE", help="The bundle that encodes the images.")
]
GalleryDir = Annotated[
    Path, typer.Option("--out", "-o", envvar="ZSCIR_GALLERY", help="The gallery directory.")
]
BatchSize = Annotated[
    int, typer.Option("--batch-size", min=1, help="Images per encoder call (and per commit).")
]


class ImagesPerSecondColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} images/s" if task.speed else "- images/s", style="progress.data.speed")


def index(
    src: Annotated[
        Path | None,
        typer.Argument(
            help="A folder of images (recursive), a list file (one path per line, relative to the file), or an "
            "official image_splits JSON (CIRR, FashionIQ). Optional with --rebuild.",
            show_default=False,
        ),
    ] = None,
    bundle: BundleDir = DEFAULT_BUNDLE,
    out: GalleryDir = DEFAULT_GALLERY,
    index_spec: Annotated[
        str | None,
        typer.Option(
            "--index",
            help=f"{', '.join(NAMED_SPECS)}, or a faiss index_factory string (e.g. 'IVF1024,Flat'). "
            "Default: the gallery's current spec (auto for a new gallery).",
            show_default=False,
        ),
    ] = None,
    add: Annotated[
        bool, typer.Option("--add", help="Add the images of a source the gallery has not seen.")
    ] = False,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Rebuild the index from the stored features (no re-encoding).")
    ] = False,
    ef_search: Annotated[
        int | None, typer.Option("--ef-search", min=1, help="HNSW efSearch to store.")
    ] = None,
    nprobe: Annotated[int | None, typer.Option("--nprobe", min=1, help="IVF nprobe to store.")] = None,
    batch_size: BatchSize = DEFAULT_BATCH_SIZE,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Image decoding threads.")] = min(
        MAX_DEFAULT_WORKERS, os.cpu_count() or 1
    ),
    backend: Annotated[str, typer.Option("--backend", help="ort or trt.")] = "ort",
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")] = "cpu",
    precision: Annotated[str, typer.Option("--precision", help="fp32, fp16 or int8 image encoder.")] = "fp32",
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Larger images are skipped (decompression bomb guard).")
    ] = DEFAULT_MAX_PIXELS,
) -> None:
    """Encode images into a gallery and build its FAISS index; re-run to resume after an interruption."""
    if src is None and not rebuild:
        _fail("Give SRC (a folder, list file or image_splits JSON), or --rebuild to rebuild the index only.")
    params = {k: v for k, v in (("efSearch", ef_search), ("nprobe", nprobe)) if v is not None}
    try:
        listing = list_images(src) if src is not None else None
        if listing is not None and not listing.entries and not listing.bad:
            _fail(f"No images in {src} (extensions {', '.join(sorted(IMAGE_EXTENSIONS))}).")
        with contextlib.ExitStack() as stack:
            runtime = None
            if listing is not None:
                runtime = stack.enter_context(Runtime(bundle, backend, device, precision, batch_size))
            gallery = stack.enter_context(_open_gallery(out, runtime, bundle, listing, add, index_spec))
            if index_spec is not None or params:
                _set_index(gallery, index_spec, params, len(listing.entries) if listing else 0)
            added, present, bad = 0, 0, list(listing.bad) if listing else []
            if listing is not None:
                plan = plan_additions(gallery, listing.entries)
                present, bad = plan.present, bad + plan.bad
                added, decode_bad = _encode(gallery, runtime, plan.todo, batch_size, workers, max_pixels)
                bad += decode_bad
            with console.status(f"Building the index ({gallery.meta['index']['spec']})..."):
                gallery.build_index(rebuild=rebuild)
            _summary(gallery, added, present, bad)
    except KeyboardInterrupt:
        err_console.print(
            f"[yellow]Interrupted.[/yellow] Every finished batch is kept in {escape(str(out))}: run the same command again "
            "to resume."
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (SourceError, GalleryError, IndexSpecError, BundleError, BackendError) as exc:
        _fail(str(exc))


def _set_index(gallery: Gallery, spec: str | None, params: dict[str, float], n_new: int) -> None:
    """Store the index spec and search parameters, checked for the size the gallery will have."""
    spec = spec or gallery.meta["index"]["spec"]
    params = {**gallery.meta["index"]["params"], **params}
    check_search_params(spec, gallery.count + n_new, gallery.embed_dim, params)
    gallery.set_index_spec(spec, params)


def _fail(message: str) -> None:
    err_console.print(f"[red]Error:[/red] {escape(message)}")
    raise typer.Exit(EXIT_ERROR)


def _open_gallery(
    out: Path,
    runtime: Runtime | None,
    bundle: Path,
    listing: SourceListing | None,
    add: bool,
    index_spec: str | None,
) -> Gallery:
    """The gallery at out, created when absent; a source it has not indexed needs --add."""
    source = {"kind": listing.kind, "path": str(listing.root)} if listing else None
    if not (out / METADATA).is_file():
        if runtime is None:
            raise GalleryError(
                f"No gallery at {out} to rebuild: index a source first (zscir-infer index SRC)."
            )
        return Gallery.create(
            out,
            bundle_id=runtime.bundle_id,
            embed_dim=runtime.embed_dim,
            index_spec=index_spec or "auto",
            bundle=str(bundle),
            sources=[source],
        )
    gallery = Gallery.open(out, bundle_id=runtime.bundle_id if runtime else None, writable=True)
    if source is not None and source not in gallery.sources:
        if not add:
            gallery.close()
            known = ", ".join(s["path"] for s in gallery.sources) or "none"
            raise GalleryError(
                f"Gallery {out} was built from {known}, not {source['path']}: pass --add to add its images, "
                "or choose another --out."
            )
        gallery.record_source(source)
    return gallery


def _encode(gallery: Gallery, runtime: Runtime, todo, batch_size: int, workers: int, max_pixels: int):
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        ImagesPerSecondColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )
    with progress:
        task = progress.add_task("Encoding", total=len(todo))
        return add_images(
            gallery,
            todo,
            runtime.encode_pixels,
            runtime.bundle.preprocess,
            batch_size=batch_size,
            workers=workers,
            max_pixels=max_pixels,
            on_progress=lambda n: progress.advance(task, n),
        )


def _summary(gallery: Gallery, added: int, present: int, bad: list[tuple[str, str]]) -> None:
    info = gallery.meta["index"]
    table = Table(show_header=False)
    table.add_row("gallery", Text(str(gallery.root)))
    table.add_row("images in the gallery", f"{gallery.count:,}")
    table.add_row("index", Text(f"{info['factory'] or 'none (empty)'} (spec {info['spec']})"))
    table.add_row("added", f"{added:,}")
    table.add_row("skipped, already present", f"{present:,}")
    table.add_row("skipped, bad files", f"{len(bad):,}")
    console.print(table)
    for path, reason in bad[:BAD_FILES_SHOWN]:
        console.print(Text.assemble(("  bad ", "yellow"), reason if path in reason else f"{path}: {reason}"))
    if len(bad) > BAD_FILES_SHOWN:
        console.print(f"  ... and {len(bad) - BAD_FILES_SHOWN:,} more bad files.")


def register(app: typer.Typer) -> None:
    app.command("index")(index)
