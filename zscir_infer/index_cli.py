"""`zscir-infer index`: build, extend, resume or re-tune a gallery (the CLI of `zscir_infer.index_images`).

    zscir-infer index photos/ --bundle zscir-out/bundle --out zscir-out/gallery   # a folder, recursively
    zscir-infer index more.txt --out zscir-out/gallery --add                      # another source
    zscir-infer index cirr/image_splits/split.rc2.val.json --out galleries/cirr-val
    zscir-infer index --out zscir-out/gallery --rebuild --index hnsw --ef-search 128  # no re-encoding
    zscir-infer index photos/ --out g --store milvus                               # Milvus Lite: g/gallery.db
    zscir-infer index photos/ --out g --store milvus --uri http://host:19530 --collection photos --index hnsw
    zscir-infer index photos/ --out g --engine ray [--ray-address auto]            # encode on Ray Data actors

Re-running an interrupted command resumes it: images already committed are skipped, the rest are
encoded, and the index is rebuilt from the stored features. Bad files are reported and skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
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

from zscir_infer.cli_style import (
    DEFAULT_BUNDLE,
    DEFAULT_GALLERY,
    EXIT_INTERRUPTED,
    Backend,
    BatchSize,
    BundleDir,
    Device,
    JsonOutput,
    Precision,
    command,
    console,
    err_console,
)
from zscir_infer.errors import UsageError
from zscir_infer.gallery import STORES
from zscir_infer.indexing import DEFAULT_WORKERS, ENGINES, IndexSummary, index_images
from zscir_infer.preprocess import DEFAULT_MAX_PIXELS
from zscir_infer.runtime import DEFAULT_BATCH_SIZE
from zscir_infer.search import NAMED_SPECS

BAD_FILES_SHOWN = 20

GalleryOut = Annotated[Path, typer.Option("--out", "-o", envvar="ZSCIR_GALLERY", help="The gallery directory.")]


class ImagesPerSecondColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} images/s" if task.speed else "- images/s", style="progress.data.speed")


def register(app: typer.Typer) -> None:
    command(app, "index")(index)


def index(
    src: Annotated[Path | None, typer.Argument(
        help="A folder of images (recursive), a list file (one path per line, relative to the file), or an "
        "official image_splits JSON (CIRR, FashionIQ). Optional with --rebuild.", show_default=False)] = None,
    bundle: BundleDir = DEFAULT_BUNDLE,
    out: GalleryOut = DEFAULT_GALLERY,
    index_spec: Annotated[str | None, typer.Option(
        "--index", help=f"{', '.join(NAMED_SPECS)}, or a faiss index_factory string (e.g. 'IVF1024,Flat'); "
        "with --store milvus also ivf_flat or a Milvus index type (HNSW, IVF_SQ8, GPU_CAGRA on a server, ...). "
        "Default: the gallery's current spec (auto for a new gallery).", show_default=False)] = None,
    add: Annotated[bool, typer.Option("--add", help="Add the images of a source the gallery has not seen.")] = False,
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Rebuild the index from the stored features (no re-encoding).")] = False,
    ef_search: Annotated[int | None, typer.Option("--ef-search", min=1, help="HNSW efSearch to store.")] = None,
    nprobe: Annotated[int | None, typer.Option("--nprobe", min=1, help="IVF nprobe to store.")] = None,
    batch_size: BatchSize = DEFAULT_BATCH_SIZE,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Image decoding threads.")] = DEFAULT_WORKERS,
    backend: Backend = "ort",
    device: Device = "cpu",
    precision: Precision = "fp32",
    max_pixels: Annotated[int, typer.Option(
        "--max-pixels", min=1, help="Larger images are skipped (decompression bomb guard).")] = DEFAULT_MAX_PIXELS,
    store: Annotated[str | None, typer.Option(
        "--store", help="The vector store of a new gallery: faiss (embedded FAISS + SQLite) or milvus. Default: "
        "faiss, or the existing gallery's.", show_default=False)] = None,
    uri: Annotated[str | None, typer.Option(
        "--uri", help="With --store milvus: a Milvus Lite file (default gallery.db, relative to --out) or a server "
        "(http://host:19530).", show_default=False)] = None,
    collection: Annotated[str | None, typer.Option(
        "--collection", help="With --store milvus: the collection name (default zscir_gallery).",
        show_default=False)] = None,
    engine: Annotated[str, typer.Option(
        "--engine", help="local: decode and encode in this process; ray: on Ray Data actors (the [ray] extra), "
        "written as Parquet shards, then inserted.")] = "local",
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="With --engine ray: a Ray cluster ('auto' joins the one this machine is part of); "
        "default: start a local one on 127.0.0.1.", show_default=False)] = None,
    as_json: JsonOutput = False,
) -> None:
    """Encode images into a gallery and build its index (FAISS, or Milvus); re-run to resume after an interruption."""
    if src is None and not rebuild:
        raise UsageError("Give SRC (a folder, list file or image_splits JSON), or --rebuild to rebuild the index only.")
    if store is not None and store not in STORES:
        raise UsageError(f"--store {store!r}: use one of {', '.join(STORES)}.")
    if (uri is not None or collection is not None) and store not in (None, "milvus"):
        raise UsageError("--uri and --collection apply to --store milvus.")
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine!r}: use one of {', '.join(ENGINES)}.")
    if ray_address is not None and engine != "ray":
        raise UsageError("--ray-address applies to --engine ray.")
    params = {k: v for k, v in (("efSearch", ef_search), ("nprobe", nprobe)) if v is not None}
    progress = Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), ImagesPerSecondColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=err_console, transient=as_json)
    task = progress.add_task("Encoding", total=None)

    def on_progress(done: int, total: int) -> None:
        progress.start()  # on the first batch: a failing call prints its error alone
        progress.update(task, completed=done, total=total)

    def on_building(spec: str) -> None:
        progress.update(task, description=f"Building the index ({spec})")

    try:
        summary = index_images(src, bundle=bundle, gallery=out, add=add, rebuild=rebuild, index=index_spec,
                               search_params=params, batch_size=batch_size, workers=workers,
                               max_pixels=max_pixels, backend=backend, device=device, precision=precision,
                               on_progress=on_progress, on_building=on_building, store=store, uri=uri,
                               collection=collection, engine=engine, ray_address=ray_address)
    except KeyboardInterrupt:
        err_console.print(f"[yellow]Interrupted.[/yellow] Every finished batch is kept in {escape(str(out))}: run the "
                          "same command again to resume.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        if progress.live.is_started:
            progress.stop()
    if as_json:
        typer.echo(json.dumps(summary.to_json()))
    else:
        print_summary(summary)


def print_summary(summary: IndexSummary) -> None:
    table = Table(show_header=False)
    table.add_row("gallery", Text(summary.gallery))
    table.add_row("images in the gallery", f"{summary.count:,}")
    table.add_row("index", Text(f"{summary.index_factory or 'none (empty)'} (spec {summary.index_spec})"))
    table.add_row("added", f"{summary.added:,}")
    table.add_row("skipped, already present", f"{summary.present:,}")
    table.add_row("skipped, bad files", f"{len(summary.bad):,}")
    console.print(table)
    for path, reason in summary.bad[:BAD_FILES_SHOWN]:
        console.print(Text.assemble(("  bad ", "yellow"), reason if path in reason else f"{path}: {reason}"))
    if len(summary.bad) > BAD_FILES_SHOWN:
        console.print(f"  ... and {len(summary.bad) - BAD_FILES_SHOWN:,} more bad files.")
