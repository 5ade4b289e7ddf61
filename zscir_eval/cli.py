"""`zscir-eval`: one command per benchmark, evaluating a bundle or the PyTorch reference.

    zscir-eval cirr --root data/cirr --bundle bundles/lincir-vitl14 --split test --out runs/eval
    zscir-eval fashioniq --root data/fashion-iq --torch phi.safetensors --method slerp

The commands parse and validate, build the encoder, and call `zscir_eval`. The PyTorch branch
(`--torch`, `--backbone`) builds the reference in `torch_encoder`, which alone imports zscir_train, and
only when asked for: the bundle path stays torch-free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from zscir_eval import BENCHMARKS, EvalResult, Harness, QueryEncoder, run_benchmark, write_result
from zscir_eval.harness import DEFAULT_BATCH_SIZE
from zscir_infer.cli_style import (
    Backend,
    BatchSize,
    BundleDir,
    Device,
    Precision,
    Threads,
    command,
    console,
    err_console,
)
from zscir_infer.contract import CLIP_PREPROCESS, METHODS, PHI, SEARLE, TARGETPAD, sha256_file
from zscir_infer.errors import UsageError

RANDOM_INIT = "random-init"  # a backbone without weights is drawn anew each run: never cache its features
TORCH_DEVICE = "cpu"  # the PyTorch reference runs where its backbone was loaded
BUNDLE_DEFAULTS = {"backend": "ort", "device": "cpu", "precision": "fp32"}  # options only a bundle takes
HELP = {
    "cirr": "CIRR: Recall@{1,5,10,50} without the reference, subset Recall@{1,2,3}; test1 submission files.",
    "circo": "CIRCO: mAP@{5,10,25,50} over the top 50; test submission file.",
    "fashioniq": "FashionIQ: Recall@10/50 per category (dress, shirt, toptee) and their means (val).",
    "genecis": "GeneCIS: Recall@{1,2,3} on its four tasks, per-query galleries, attribute crops.",
    "imagenet-r": "ImageNet -> ImageNet-R domain conversion (cartoon, origami, toy, sculpture): Recall@10/50.",
}

app = typer.Typer(
    help="Evaluate a zscir bundle (or the PyTorch reference) on CIRR, CIRCO, FashionIQ, GeneCIS and "
    "ImageNet-R in their official layouts and protocols.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

Method = Enum("Method", {m: m for m in METHODS}, type=str)

Root = Annotated[
    Path,
    typer.Option("--root", help="The dataset folder, in the official layout.", exists=True, file_okay=False),
]
OptionalBundle = Annotated[(Path | None, *BundleDir.__metadata__)]  # the shared --bundle, or --torch/--backbone
TorchCkpt = Annotated[
    Path | None,
    typer.Option(
        "--torch",
        help="A phi checkpoint (zscir or official) run with the PyTorch reference instead of a bundle.",
        exists=True,
        dir_okay=False,
    ),
]
BackboneName = Annotated[
    str | None,
    typer.Option(
        "--backbone",
        help="With --torch: the open_clip backbone when the checkpoint does not name it (official "
        "ones); alone: the PyTorch reference without phi (slerp, sum, baselines); also a Hugging Face CLIP "
        "folder or a preset (bge-vl-base, bge-vl-large).",
    ),
]
Pretrained = Annotated[
    str | None, typer.Option("--pretrained", help="With --backbone: open_clip tag or weights file.")
]
Split = Annotated[
    str, typer.Option("--split", help="val, or test (CIRR test1, CIRCO test): writes the submission files.")
]
MethodOpt = Annotated[Method, typer.Option(
    "--method", help="phi (pseudo-token), slerp, sum (normalize(raw image + raw text), BGE-VL's), or a baseline.")]
Template = Annotated[
    str | None,
    typer.Option(
        "--template",
        help="Prompt with {caption} and {placeholder} (or the placeholder itself, e.g. $); {domain} instead "
        "of {caption} for imagenet-r. Default: the paper's.",
    ),
]
Out = Annotated[
    Path, typer.Option("--out", help="Where the metrics, the submissions and the gallery cache go.")
]
SkipMissing = Annotated[
    bool,
    typer.Option(
        "--skip-missing",
        help="Leave out queries and gallery images whose files are missing; report how many.",
    ),
]


@dataclass
class EncoderChoice:
    """Which encoder to run: a bundle on a backend, or the PyTorch reference."""

    bundle: Path | None
    backend: str
    device: str
    precision: str
    threads: int | None
    ckpt: Path | None
    backbone: str | None
    pretrained: str | None

    def build(self) -> tuple[QueryEncoder, str, str]:
        """(encoder, image-space id, encoder id)."""
        if (self.bundle is None) == (self.ckpt is None and self.backbone is None):
            raise UsageError("Pass exactly one of --bundle or --torch/--backbone.")
        if self.bundle is not None:
            return bundle_encoder(self.bundle, self.backend, self.device, self.precision, self.threads)
        bundle_only = {"backend": self.backend, "device": self.device, "precision": self.precision}
        given = [f"--{name} {value}" for name, value in bundle_only.items() if value != BUNDLE_DEFAULTS[name]]
        if given:
            raise UsageError(f"{', '.join(given)}: only a --bundle takes these; the PyTorch reference runs "
                             f"in float32 on the {TORCH_DEVICE}.")
        return torch_encoder(self.ckpt, self.backbone, self.pretrained, self.threads)


def bundle_encoder(bundle: Path, backend: str, device: str, precision: str, threads: int | None):
    """The torch-free runtime on a bundle -> (encoder, image-space id, encoder id)."""
    from zscir_infer import Runtime

    runtime = Runtime(bundle, backend=backend, device=device, precision=precision, threads=threads)
    setting = f"{backend}:{device.split(':')[0]}:{precision}"  # features differ slightly across these
    return runtime, f"bundle:{runtime.image_space_id}:{setting}", f"bundle:{runtime.bundle_id}:{setting}"


def torch_encoder(ckpt: Path | None, backbone_name: str | None, pretrained: str | None, threads: int | None):
    """The PyTorch reference from a phi checkpoint and/or a backbone -> (encoder, image-space id, encoder id).

    The only place zscir_eval imports torch's side, and only when called: the bundle path never loads it.
    """
    import torch

    from zscir_train.backbone import load_backbone
    from zscir_train.checkpoint import check_dims, load_phi_checkpoint
    from zscir_train.reference import TorchReference
    from zscir_train.targetpad import with_preprocess

    if threads is not None:
        torch.set_num_threads(threads)
    phi, meta = load_phi_checkpoint(ckpt) if ckpt is not None else (None, None)
    name = backbone_name or (meta.backbone_name if meta else None)
    if name is None:
        raise UsageError(f"{ckpt} does not name its backbone: pass --backbone (and --pretrained).")
    if not backbone_name and meta is not None:
        pretrained = meta.backbone_pretrained
    backbone = load_backbone(name, pretrained)
    if meta is not None:
        check_dims(meta, backbone, ckpt)
    # the preprocessing its authors evaluate with, as `zscir-export` gives the bundle: SEARLE's target pad
    backbone = with_preprocess(backbone, TARGETPAD if meta is not None and meta.method == SEARLE else CLIP_PREPROCESS)
    loaded = backbone.pretrained  # a Hugging Face folder (--backbone PATH) names its weights file here
    weights = sha256_file(Path(loaded)) if loaded and Path(loaded).is_file() else loaded
    # the architecture and preprocessing as loaded, not just the name: a config edited under the same
    # name loads the same weights into another network
    tower = json.dumps({"arch": backbone.arch, "preprocess": backbone.preprocess.to_dict()}, sort_keys=True)
    image_space = f"torch:{name}:{hashlib.sha256(tower.encode()).hexdigest()}:{weights or RANDOM_INIT}"
    phi_id = sha256_file(ckpt) if ckpt else "no-phi"
    return TorchReference(backbone, phi, meta), image_space, f"{image_space}:{phi_id}"


def print_result(result: EvalResult, paths: list[Path]) -> None:
    table = Table(title=f"{result.benchmark} {result.split} — {result.method} ({result.num_queries} queries)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(escape(name), f"{value:.2f}")
    if result.metrics:
        console.print(table)
    console.print(f"template: {escape(result.template)}")
    for path in paths:
        console.print(f"wrote {escape(str(path))}")


def evaluate(
    benchmark: str,
    root: Path,
    choice: EncoderChoice,
    split: str,
    method: str,
    template: str | None,
    out: Path,
    skip_missing: bool,
    batch_size: int,
) -> None:
    encoder, image_space, encoder_id = choice.build()
    cache_dir = None if RANDOM_INIT in image_space else out / "cache"
    harness = Harness(encoder, image_space, cache_dir, batch_size, err_console, encoder_id)
    result = run_benchmark(
        harness, benchmark, root, split=split, method=method, template=template, skip_missing=skip_missing
    )
    print_result(result, write_result(result, out))


def benchmark_command(benchmark: str):
    def run(
        ctx: typer.Context,
        root: Root,
        bundle: OptionalBundle = None,
        backend: Backend = BUNDLE_DEFAULTS["backend"],
        device: Device = BUNDLE_DEFAULTS["device"],
        precision: Precision = BUNDLE_DEFAULTS["precision"],
        threads: Threads = None,
        ckpt: TorchCkpt = None,
        backbone: BackboneName = None,
        pretrained: Pretrained = None,
        split: Split = "val",
        method: MethodOpt = Method[PHI],
        template: Template = None,
        out: Out = Path("runs/eval"),
        skip_missing: SkipMissing = False,
        batch_size: BatchSize = DEFAULT_BATCH_SIZE,
    ) -> None:
        if (ckpt or backbone) and ctx.get_parameter_source("bundle").name == "ENVIRONMENT":
            bundle = None  # --torch / --backbone on the command line win over $ZSCIR_BUNDLE
        choice = EncoderChoice(bundle, backend, device, precision, threads, ckpt, backbone, pretrained)
        evaluate(benchmark, root, choice, split, method.value, template, out, skip_missing, batch_size)

    run.__doc__ = HELP[benchmark]
    return run


for _name in BENCHMARKS:
    command(app, _name)(benchmark_command(_name))
