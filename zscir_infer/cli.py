"""`zscir-infer`: composed image retrieval with a bundle and a gallery, torch-free.

    zscir-infer query img.png "as a sketch"                          # after the demo: default bundle/gallery
    zscir-infer query img.png "make it red" -k 5 --method slerp --json
    zscir-infer query --batch queries.jsonl --show sheet.html         # many queries, a contact sheet
    zscir-infer index photos/ --out zscir-out/gallery                 # see index_cli
    zscir-infer bundle-info zscir-out/bundle                          # what a bundle holds, what runs it

Bundle and gallery default to $ZSCIR_BUNDLE / $ZSCIR_GALLERY, else ./zscir-out/bundle and
./zscir-out/gallery (where `make demo` writes them).
"""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from zscir_infer.bundle import load_bundle
from zscir_infer.cli_style import (
    DEFAULT_BUNDLE,
    DEFAULT_GALLERY,
    Backend,
    BatchSize,
    BundleDir,
    Device,
    GalleryDir,
    JsonOutput,
    Precision,
    Profile,
    Threads,
    command,
    console,
    err_console,
)
from zscir_infer.contract import METHODS
from zscir_infer.errors import UsageError, ZscirError
from zscir_infer.gallery import Gallery
from zscir_infer.index_cli import register as register_index
from zscir_infer.query import QueryRequest, QueryResult, RecallTally, iter_queries, read_batch
from zscir_infer.runtime import DEFAULT_BATCH_SIZE, Runtime
from zscir_infer.search import index_device_for
from zscir_infer.serve.cli import register as register_serve

MAX_ECHOED_BATCH = 50  # queries printed in full; a larger batch prints its summary only
MAX_SHEET_ROWS = 50  # queries drawn on a contact sheet (the first ones): a sheet is for looking at

app = typer.Typer(
    help="Zero-shot composed image retrieval with a zscir bundle: query a gallery, index images, inspect bundles.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

Method = Enum("Method", {m: m for m in METHODS}, type=str)


def check_bundle_dir(bundle: Path) -> None:
    if not (bundle / "manifest.json").is_file():
        default = " (the default; set ZSCIR_BUNDLE or pass --bundle)" if bundle == DEFAULT_BUNDLE else ""
        raise ZscirError(f"No bundle at {bundle}{default}. Run `make demo` to build the demo's bundle, or export one "
                         "with `zscir-export`.")


def check_gallery_dir(gallery: Path) -> None:
    if not (gallery / "gallery.json").is_file():
        default = " (the default; set ZSCIR_GALLERY or pass --gallery)" if gallery == DEFAULT_GALLERY else ""
        raise ZscirError(f"No gallery at {gallery}{default}. Build one with `zscir-infer index IMAGES --out {gallery}`, "
                         "or run `make demo`.")


def shown_path(path: str) -> str:
    """A path relative to the current folder when it lies inside it (shorter to read), else as stored."""
    relative = os.path.relpath(path)
    return path if relative.startswith(os.pardir) else relative


def print_results(results: list[QueryResult]) -> None:
    for number, result in enumerate(results, start=1):
        request = result.request
        label = escape(f"[{request.id}] ") if request.id is not None else ""
        console.print(f"\n{label}query {number}: {escape(request.reference)} + \"{escape(request.text)}\"  "
                      f"({result.method})")
        console.print(f"{'rank':>4}  {'score':>7}  path")
        for hit in result.hits:
            mark = {True: "  [green]✓ target[/green]", False: "", None: ""}[hit.correct]
            console.print(f"{hit.rank:>4}  {hit.score:7.4f}  {escape(shown_path(hit.path))}{mark}")
        if not result.hits:
            console.print("      (the gallery is empty)")


def print_recall(tally: RecallTally, method: str) -> None:
    scores = tally.scores()
    if scores:
        console.print(f"\nrecall over {tally.judged} queries with targets ({method}): "
                      + "  ".join(f"{name} {value:.3f}" for name, value in scores.items()))


@command(app, "query")
def query(
    reference: Annotated[str | None, typer.Argument(
        help="The reference image: a file, or the name of a gallery image.", show_default=False)] = None,
    text: Annotated[str | None, typer.Argument(help="How to change it, e.g. 'as a sketch'.", show_default=False)] = None,
    bundle: BundleDir = DEFAULT_BUNDLE,
    gallery: GalleryDir = DEFAULT_GALLERY,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Results per query.")] = 10,
    method: Annotated[Method | None, typer.Option(
        "--method", help="phi (the bundle's pseudo-token encoder), slerp, sum (BGE-VL: normalized raw image + "
        "text), or a baseline: image, text, average. Default: the bundle's method.", show_default=False)] = None,
    template: Annotated[str | None, typer.Option(
        "--template", help="phi prompt with {caption} and {placeholder} (or the placeholder written out, e.g. "
        "'a photo of $ that {caption}'), or a template name from the bundle.")] = None,
    alpha: Annotated[float | None, typer.Option(
        "--alpha", min=0.0, max=1.0, help="slerp text weight (default: the bundle's).")] = None,
    exclude_ref: Annotated[bool, typer.Option(
        "--exclude-ref", help="Leave the reference image out of the results (CIRR's protocol).")] = False,
    filter: Annotated[str | None, typer.Option(
        "--filter", help="Only results whose metadata match, e.g. 'path like \"photos/2024/%\"' or "
        "'name in [\"a.jpg\", \"b.jpg\"]'.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per query on stdout.")] = False,
    show: Annotated[Path | None, typer.Option(
        "--show", help="Write a contact sheet of the queries and results: .png or .html.")] = None,
    batch: Annotated[Path | None, typer.Option(
        "--batch", help="Run the queries of a JSONL or CSV file (reference, text, optional targets).")] = None,
    backend: Backend = "ort",
    device: Device = "cpu",
    precision: Precision = "fp32",
    batch_size: BatchSize = DEFAULT_BATCH_SIZE,
    threads: Threads = None,
) -> None:
    """Retrieve the gallery images that match REFERENCE changed as TEXT says; prints rank, score and path."""
    if batch is None and (reference is None or text is None):
        raise UsageError("Give REFERENCE and TEXT, or --batch FILE.")
    if batch is not None and (reference is not None or text is not None):
        raise UsageError("Give either REFERENCE and TEXT, or --batch FILE, not both.")
    if show is not None and show.suffix.lower() not in (".png", ".html"):
        raise UsageError(f"--show {show}: use a .png or .html file name.")
    check_bundle_dir(bundle)
    check_gallery_dir(gallery)
    requests = read_batch(batch) if batch else [QueryRequest(reference, text)]
    tally, shown, sheet = RecallTally(k), [], []
    with Runtime(bundle, backend, device, precision, batch_size, threads) as runtime, \
            Gallery.open(gallery, bundle_id=runtime.bundle_id, index_device=index_device_for(device)) as g:
        used_method = method.value if method else runtime.default_method
        for results in iter_queries(runtime, g, requests, k=k, method=used_method, template=template, alpha=alpha,
                                    exclude_ref=exclude_ref, filter=filter,
                                    base_dir=batch.parent if batch else None):
            tally.add(results)
            if as_json:
                for result in results:
                    typer.echo(json.dumps(result.to_json(), ensure_ascii=False))
            elif len(requests) <= MAX_ECHOED_BATCH:
                shown += results
            sheet += results[:MAX_SHEET_ROWS - len(sheet)] if show is not None else []
    if not as_json:
        print_results(shown)
        print_recall(tally, used_method)
    if show is not None:
        from zscir_infer.contact_sheet import write_contact_sheet

        write_contact_sheet(show, sheet)
        more = f" (the first {len(sheet)} of {len(requests)} queries)" if len(requests) > len(sheet) else ""
        err_console.print(f"contact sheet: {show}{more}")


@command(app, "bundle-info")
def bundle_info(
    bundle: Annotated[Path, typer.Argument(envvar="ZSCIR_BUNDLE", help="The bundle directory.")] = DEFAULT_BUNDLE,
    backend: Backend = "ort",
    device: Device = "cpu",
    precision: Precision = "fp32",
    verify: Annotated[bool, typer.Option(help="Hash every file now and check its sha256.")] = True,
    as_json: JsonOutput = False,
) -> None:
    """What a bundle holds (method, backbone, prompts, preprocessing, graphs) and which providers run it."""
    check_bundle_dir(bundle)
    loaded = load_bundle(bundle)
    if verify:
        loaded.verify_all(rehash=True)
    summary = loaded.summary()
    with Runtime(loaded, backend, device, precision) as runtime:
        summary["providers"] = runtime.providers_used()
    summary["verified"] = verify
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo("\n".join(summary_lines(summary, f"{backend}, {device}, {precision}")))


def summary_lines(summary: dict, runner: str) -> list[str]:
    backbone, placeholder = summary["backbone"], summary["placeholder"]
    lines = [
        f"{summary['path']}  (zscir bundle v{summary['format_version']}, zscir {summary['zscir_version']}, "
        f"created {summary['created']})",
        f"method {summary['method']}; backbone {backbone['name']} ({backbone['pretrained'] or 'no pretrained tag'}); "
        f"D={summary['embed_dim']} W={summary['width']} context {summary['context_length']}",
        f"placeholder {placeholder['text']!r} (id {placeholder['id']})" if placeholder
        else "no placeholder (training-free composition)",
        *(f"template {name}: {template}" for name, template in summary["templates"].items()),
        f"slerp alpha {summary['slerp_alpha']}; preprocess {json.dumps(summary['preprocess'])}",
        *(f"graph {name}: {g['file']} ({g['bytes'] / 1e6:.1f} MB)" for name, g in summary["graphs"].items()),
        *(f"engine {e['graph']} {e['precision']}: {e['file']} (TensorRT {e['tensorrt_version']}, compute "
          f"capability {e['compute_capability']})" for e in summary["engines"]),
        *(f"runs {graph} ({runner}) on: {', '.join(providers)}" for graph, providers in summary["providers"].items()),
        f"sha256: {'every file hashed and checked' if summary['verified'] else 'files checked when opened'}; "
        f"bundle id {summary['bundle_id'][:16]}",
    ]
    return lines


@command(app, "engines")
def engines(
    bundle: Annotated[Path, typer.Argument(envvar="ZSCIR_BUNDLE", help="The bundle directory.")] = DEFAULT_BUNDLE,
    precision: Annotated[list[str], typer.Option(
        "--precision", help="Engine precision(s): fp16, fp32 (repeat the option for both).")] = ["fp16"],  # noqa: B006
    profile: Profile = None,
) -> None:
    """Build TensorRT engines for this machine's GPU from a bundle's ONNX graphs and record them in it."""
    from zscir_infer.engines import DEFAULT_PROFILES, add_engines_to_bundle, parse_profile

    check_bundle_dir(bundle)
    load_bundle(bundle).verify_all()
    profiles = tuple(parse_profile(p) for p in profile) if profile else DEFAULT_PROFILES
    manifest = add_engines_to_bundle(bundle, tuple(precision), profiles)
    for e in manifest["engines"]:
        typer.echo(f"engine {e['graph']} {e['precision']}: {e['file']} (TensorRT {e['tensorrt_version']}, "
                   f"compute capability {e['compute_capability']})")


register_index(app)
register_serve(app)

if __name__ == "__main__":
    app()
