"""What to export: a backbone and, for the pseudo-token methods, phi, from the command line's arguments.

`--ckpt` takes
- a zscir phi checkpoint (safetensors; its metadata names the backbone, so no --model is needed);
- an official LinCIR / SEARLE (`{'Phi': ...}`) or Pic2Word (`{'state_dict_img2text': ...}`) `.pt`, which
  does not record its backbone: --model and --pretrained say which;
- a TAT checkpoint (safetensors, zscir metadata format "zscir-tat": the whole CLIP with the tuned image
  encoder merged), exported as a slerp bundle with the tuned weights;
- a fine-tuned CLIP (format "zscir-clip", `zscir_train.training.sum_tune`: the whole CLIP tuned for the sum
  query), exported as a sum bundle with the tuned weights.
`--method slerp` or `--method sum` without --ckpt exports a backbone's encoders alone (--model, --pretrained);
--model may be a Hugging Face CLIP folder (`config.json` + weights) or a preset such as `bge-vl-base`
(`zscir_train.hf_clip`): `zscir-export --method sum --model PATH_TO_HF_FOLDER` gives a BGE-VL bundle.
`--preprocess` picks the image preprocessing the bundle records: "clip" (open_clip's eval transform) or
"targetpad" (SEARLE's); SEARLE exports with targetpad by default, as its authors evaluate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError, safe_open
from torch import nn

from zscir_infer.contract import (
    CLIP_PREPROCESS,
    ENCODER_METHODS,
    EXPORT_SOURCES,
    PREPROCESS_CHOICES,
    SEARLE,
    SLERP,
    SUM,
    TARGETPAD,
    sha256_file,
)
from zscir_infer.errors import ZscirError
from zscir_train.backbone import Backbone, load_backbone
from zscir_train.checkpoint import METADATA_KEY, PhiMeta, check_dims, load_phi_checkpoint
from zscir_train.targetpad import with_preprocess

TAT_FORMAT = "zscir-tat"
CLIP_FT_FORMAT = "zscir-clip"  # zscir_train.training.sum_tune's checkpoint: a whole CLIP, fine-tuned
TUNED_FORMATS = {TAT_FORMAT: ("tat", SLERP), CLIP_FT_FORMAT: ("clip-ft", SUM)}  # format -> (source kind, method)
SAFETENSORS_MAGIC_LEN = 9  # 8-byte header length, then the JSON header's "{"


class ExportSourceError(ZscirError, ValueError):
    """The arguments do not describe something exportable; the message says what to pass."""


@dataclass
class ExportSource:
    backbone: Backbone
    method: str  # lincir | searle | pic2word | slerp | sum
    phi: nn.Module | None = None
    meta: PhiMeta | None = None
    info: dict = field(default_factory=dict)  # the manifest's `source`: what was exported, with sha256


def _safetensors_metadata(path: Path) -> dict | None:
    """The zscir metadata of a safetensors file; None for a file that is not safetensors."""
    with open(path, "rb") as f:
        head = f.read(SAFETENSORS_MAGIC_LEN)
    if len(head) < SAFETENSORS_MAGIC_LEN or head[8:9] != b"{":
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ExportSourceError(f"{path} is a damaged safetensors file ({exc}): re-save or re-download it.") from exc
    try:
        return json.loads(metadata.get(METADATA_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise ExportSourceError(f"{path}: its zscir metadata is not valid JSON ({exc}).") from exc


def _tat_source(ckpt: Path, meta: dict, model: str | None, pretrained: str | None, method: str | None) -> ExportSource:
    """A TAT checkpoint (slerp by default) or a fine-tuned CLIP (sum by default): the whole CLIP's weights."""
    kind, default_method = TUNED_FORMATS[meta["format"]]
    what = "a TAT checkpoint (a tuned image encoder for slerp)" if kind == "tat" else \
        "a fine-tuned CLIP (for the sum query)"
    if method not in (None, *ENCODER_METHODS):
        raise ExportSourceError(
            f"{ckpt} is {what}, not a phi: drop --method {method} or pass --method {default_method}."
        )
    if pretrained is not None:
        raise ExportSourceError(
            f"{ckpt} is {what} and holds the backbone weights itself: drop --pretrained {pretrained}."
        )
    name = model or meta.get("base")
    if not name:
        raise ExportSourceError(f"{ckpt} does not name its base model: pass --model (e.g. ViT-L-14).")
    backbone = load_backbone(name, str(ckpt), activation=meta.get("activation"))
    info = {"kind": kind, "checkpoint": ckpt.name, "checkpoint_sha256": sha256_file(ckpt),
            "base_pretrained": meta.get("base_pretrained") and Path(meta["base_pretrained"]).name}
    info |= {"lora": meta.get("lora", {})} if kind == "tat" else {"training": meta.get("training", {})}
    return ExportSource(backbone, method or default_method, info=info)


def _phi_source(ckpt: Path, model: str | None, pretrained: str | None, method: str | None) -> ExportSource:
    if method in ENCODER_METHODS:
        raise ExportSourceError(
            f"--method {method} exports no phi, but {ckpt} is a phi checkpoint: drop --ckpt (and pass --model), or "
            "drop --method to export the phi."
        )
    phi, meta = load_phi_checkpoint(ckpt, method=method)
    if method is not None and method != meta.method:
        raise ExportSourceError(f"{ckpt} is a {meta.method} checkpoint; --method {method} contradicts it.")
    official = meta.source != "zscir"
    if model is None and (official or not meta.backbone_name):
        what = f"an official {meta.method} checkpoint" if official else "a phi checkpoint without a backbone name"
        raise ExportSourceError(
            f"{ckpt} is {what}, which does not record its backbone: pass --model and --pretrained, e.g. "
            f"`--model ViT-L-14 --pretrained openai` (phi has D={meta.embed_dim}, W={meta.width})."
        )
    model = model or meta.backbone_name
    if pretrained is None and model == meta.backbone_name:
        pretrained = meta.backbone_pretrained
    # the activation phi was trained with (recorded by zscir checkpoints), else what the weights imply
    activation = meta.backbone_activation if model == meta.backbone_name else None
    backbone = load_backbone(model, pretrained, activation=activation)
    check_dims(meta, backbone, ckpt)
    info = {"kind": meta.source, "checkpoint": ckpt.name, "checkpoint_sha256": sha256_file(ckpt)}
    return ExportSource(backbone, meta.method, phi.eval(), meta, info)


def _preprocessed(source: ExportSource, preprocess: str | None) -> ExportSource:
    """The source with its eval preprocessing: `preprocess`, else targetpad for SEARLE, else clip."""
    mode = preprocess or (TARGETPAD if source.method == SEARLE else CLIP_PREPROCESS)
    source.backbone = with_preprocess(source.backbone, mode)
    return source


def resolve_source(ckpt: str | Path | None, model: str | None = None, pretrained: str | None = None,
                   method: str | None = None, preprocess: str | None = None) -> ExportSource:
    """The backbone and phi to export, from --ckpt, --model, --pretrained, --method and --preprocess."""
    if method is not None and method not in EXPORT_SOURCES:
        raise ExportSourceError(f"Unknown method '{method}': use one of {EXPORT_SOURCES}.")
    if preprocess is not None and preprocess not in PREPROCESS_CHOICES:
        raise ExportSourceError(f"Unknown preprocessing '{preprocess}': use one of {PREPROCESS_CHOICES}.")
    if ckpt is None:
        if method not in ENCODER_METHODS:
            raise ExportSourceError(
                "Nothing to export: pass --ckpt (a zscir, LinCIR, SEARLE, Pic2Word, TAT or fine-tuned CLIP "
                "checkpoint), or --method slerp|sum --model NAME [--pretrained TAG|PATH] for the encoders alone "
                "(NAME may be a Hugging Face CLIP folder, e.g. BGE-VL's: --method sum --model PATH)."
            )
        if model is None:
            raise ExportSourceError(f"--method {method} needs --model (e.g. ViT-L-14 with --pretrained, or a Hugging "
                                    "Face CLIP folder).")
        backbone = load_backbone(model, pretrained)
        return _preprocessed(ExportSource(backbone, method, info={"kind": "backbone"}), preprocess)
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise ExportSourceError(f"Checkpoint {ckpt} does not exist.")
    meta = _safetensors_metadata(ckpt)
    if meta and meta.get("format") in TUNED_FORMATS:
        return _preprocessed(_tat_source(ckpt, meta, model, pretrained, method), preprocess)
    return _preprocessed(_phi_source(ckpt, model, pretrained, method), preprocess)
