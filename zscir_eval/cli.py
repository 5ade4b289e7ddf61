"""`zscir-eval`: one command per benchmark, evaluating a bundle or the PyTorch reference.

    zscir-eval cirr --root data/cirr --bundle bundles/lincir-vitl14 --split test --out runs/eval
    zscir-eval fashioniq --root data/fashion-iq --torch phi.safetensors --method slerp

The commands parse and validate, build the encoder, and call `zscir_infer.eval`. The PyTorch branch
(`--torch`, `--backbone`) imports zscir_train only when asked for, so the runtime path stays torch-free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from zscir_infer.backends import BACKENDS, BackendError
from zscir_infer.bundle import sha256_file
from zscir_infer.eval import BENCHMARKS, EvalResult, Harness, MissingImagesError, run_benchmark, write_result
from zscir_infer.eval.harness import DEFAULT_BATCH_SIZE

RANDOM_INIT = "random-init"  # a backbone without weights is drawn anew each run: never cache its features
EXIT_BAD_INPUT, EXIT_MISSING_IMAGES = 1, 2
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
console = Console()
err_console = Console(stderr=True)

Method = Enum("Method", {m: m for m in ("phi", "slerp", "image", "text", "average")}, type=str)
Backend = Enum("Backend", {b: b for b in BACKENDS}, type=str)


Root = Annotated[
    Path,
    typer.Option("--root", help="The dataset folder, in the official layout.", exists=True, file_okay=False),
]
BundleDir = Annotated[
    Path | None,
    typer.Option(
        "--bundle", help="A zscir bundle (directory with manifest.json).", exists=True, file_okay=False
    ),
]
BackendOpt = Annotated[
    Backend, typer.Option("--backend", help="With --bundle: ort (ONNX Runtime) or trt (TensorRT engines).")
]
Device = Annotated[str, typer.Option("--device", help="With --bundle: cpu, cuda or cuda:N.")]
Precision = Annotated[
    str, typer.Option("--precision", help="With --bundle: the graphs' precision (fp32, fp16).")
]
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
        "ones); alone: the PyTorch reference without phi (slerp, baselines).",
    ),
]
Pretrained = Annotated[
    str | None, typer.Option("--pretrained", help="With --backbone: open_clip tag or weights file.")
]
Split = Annotated[
    str, typer.Option("--split", help="val, or test (CIRR test1, CIRCO test): writes the submission files.")
]
MethodOpt = Annotated[Method, typer.Option("--method", help="phi (pseudo-token), slerp, or a baseline.")]
Template = Annotated[
    str | None,
    typer.Option(
        "--template",
        help="Prompt with {placeholder} and {caption} ({domain} for imagenet-r); default: the paper's.",
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
BatchSize = Annotated[int, typer.Option("--batch-size", help="Images per encoder call.", min=1)]


@dataclass
class EncoderChoice:
    """Which encoder to run: a bundle on a backend, or the PyTorch reference."""

    bundle: Path | None
    backend: str
    device: str
    precision: str
    ckpt: Path | None
    backbone: str | None
    pretrained: str | None

    def build(self):
        """(encoder, image-space id, encoder id)."""
        if (self.bundle is None) == (self.ckpt is None and self.backbone is None):
            raise typer.BadParameter("Pass exactly one of --bundle or --torch/--backbone.")
        if self.bundle is not None:
            return bundle_encoder(self.bundle, self.backend, self.device, self.precision)
        return torch_encoder(self.ckpt, self.backbone, self.pretrained)


def bundle_encoder(bundle: Path, backend: str, device: str, precision: str):
    """The torch-free runtime on a bundle -> (encoder, image-space id, encoder id)."""
    from zscir_infer import Runtime

    runtime = Runtime(bundle, backend=backend, device=device, precision=precision)
    setting = f"{backend}:{device.split(':')[0]}:{precision}"  # features differ slightly across these
    return runtime, f"bundle:{runtime.image_space_id}:{setting}", f"bundle:{runtime.bundle_id}:{setting}"


def torch_encoder(ckpt: Path | None, backbone_name: str | None, pretrained: str | None):
    """The PyTorch reference from a phi checkpoint and/or a backbone -> (encoder, image-space id, encoder id).

    zscir_train is imported here only, so the bundle path never loads torch.
    """
    from zscir_train.backbone import load_backbone
    from zscir_train.checkpoint import check_dims, load_phi_checkpoint
    from zscir_train.reference import TorchReference

    phi, meta = load_phi_checkpoint(ckpt) if ckpt is not None else (None, None)
    name = backbone_name or (meta.backbone_name if meta else None)
    if name is None:
        raise typer.BadParameter(f"{ckpt} does not name its backbone: pass --backbone (and --pretrained).")
    if not backbone_name and meta is not None:
        pretrained = meta.backbone_pretrained
    backbone = load_backbone(name, pretrained)
    if meta is not None:
        check_dims(meta, backbone, ckpt)
    weights = sha256_file(Path(pretrained)) if pretrained and Path(pretrained).is_file() else pretrained
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
        table.add_row(name, f"{value:.2f}")
    if result.metrics:
        console.print(table)
    console.print(f"template: {result.template}")
    for path in paths:
        console.print(f"wrote {path}")


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
    try:
        encoder, image_space, encoder_id = choice.build()
        cache_dir = None if RANDOM_INIT in image_space else out / "cache"
        harness = Harness(encoder, image_space, cache_dir, batch_size, err_console, encoder_id)
        result = run_benchmark(
            harness, benchmark, root, split=split, method=method, template=template, skip_missing=skip_missing
        )
    except MissingImagesError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_MISSING_IMAGES) from exc
    except (FileNotFoundError, ValueError, BackendError) as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_BAD_INPUT) from exc
    print_result(result, write_result(result, out))


def benchmark_command(benchmark: str):
    def command(
        root: Root,
        bundle: BundleDir = None,
        backend: BackendOpt = Backend.ort,
        device: Device = "cpu",
        precision: Precision = "fp32",
        ckpt: TorchCkpt = None,
        backbone: BackboneName = None,
        pretrained: Pretrained = None,
        split: Split = "val",
        method: MethodOpt = Method.phi,
        template: Template = None,
        out: Out = Path("runs/eval"),
        skip_missing: SkipMissing = False,
        batch_size: BatchSize = DEFAULT_BATCH_SIZE,
    ) -> None:
        choice = EncoderChoice(bundle, backend.value, device, precision, ckpt, backbone, pretrained)
        evaluate(benchmark, root, choice, split, method.value, template, out, skip_missing, batch_size)

    command.__doc__ = HELP[benchmark]
    return command


for _name in BENCHMARKS:
    app.command(_name)(benchmark_command(_name))
