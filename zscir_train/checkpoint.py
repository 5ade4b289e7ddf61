"""phi checkpoints: zscir's own format, and the official LinCIR, SEARLE and Pic2Word `.pt` files.

zscir format: one safetensors file whose header metadata holds `zscir` = JSON of `PhiMeta` (what the
checkpoint needs to be rebuilt and exported: backbone, method, phi form and dims, placeholder,
templates, training config). Official formats: `{'Phi': state_dict}` (LinCIR, SEARLE) and
`{'state_dict_img2text': state_dict}` (Pic2Word, keys maybe prefixed `module.`), always read with
`torch.load(weights_only=True)`, so loading never executes code from the file.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from zscir_infer.atomic import atomic_path
from zscir_infer.contract import METHOD_PLACEHOLDER_POLICY, PHI_KINDS, PLACEHOLDER_POLICIES
from zscir_infer.errors import ZscirError
from zscir_train import __version__
from zscir_train.phi import build_phi, phi_kind

FORMAT = "zscir-phi"
FORMAT_VERSION = 1
METADATA_KEY = "zscir"
SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors refuses headers above 100 MB

LINCIR_PLACEHOLDER = "$"  # BPE id 259; LinCIR and SEARLE
PIC2WORD_PLACEHOLDER = "*"  # BPE id 265
DEFAULT_TEMPLATES = {
    "lincir": "a photo of $ that {caption}",
    "searle": "a photo of $ that {caption}",
    "pic2word": "a photo of * , {caption}",
}
METHOD_PHI_KIND = {"lincir": "lincir", "searle": "lincir", "pic2word": "pic2word"}
METHOD_PLACEHOLDER = {"lincir": LINCIR_PLACEHOLDER, "searle": LINCIR_PLACEHOLDER, "pic2word": PIC2WORD_PLACEHOLDER}


class CheckpointError(ZscirError, ValueError):
    """A checkpoint cannot be used; the message names the file and what to do."""


@dataclass
class PhiMeta:
    method: str  # lincir | searle | pic2word
    phi_kind: str  # lincir | pic2word (the network form)
    embed_dim: int  # D
    width: int  # W
    hidden_dim: int
    backbone_name: str | None = None
    backbone_pretrained: str | None = None
    backbone_activation: str | None = None  # quick_gelu | gelu: what the backbone phi was trained on used
    placeholder: str = LINCIR_PLACEHOLDER
    template: str = DEFAULT_TEMPLATES["lincir"]
    training: dict = field(default_factory=dict)
    source: str = "zscir"  # zscir | official-lincir | official-searle | official-pic2word
    # "first" | "all"; None (checkpoints before issue 13): the method's own, METHOD_PLACEHOLDER_POLICY
    placeholder_policy: str | None = None
    l2_normalize: bool = False  # LinCIR's --l2_normalize: image features normalized before phi
    zscir_version: str = __version__
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def policy(self) -> str:
        """Where phi's token goes: the checkpoint's recorded policy, else what the method's official code does."""
        return self.placeholder_policy or METHOD_PLACEHOLDER_POLICY[self.method]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, path: Path) -> PhiMeta:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise CheckpointError(f"{path} is a safetensors file but not a zscir phi checkpoint.")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has checkpoint format {data['format_version']}, newer than this zscir reads "
                f"({FORMAT_VERSION}): upgrade zscir."
            )
        if data.get("phi_kind") not in PHI_KINDS:
            raise CheckpointError(f"{path} names phi form {data.get('phi_kind')!r}, not one of {PHI_KINDS}: "
                                  "the checkpoint's metadata is damaged or from another tool.")
        if data.get("placeholder_policy") not in (None, *PLACEHOLDER_POLICIES):
            raise CheckpointError(f"{path} names placeholder policy {data['placeholder_policy']!r}, not one of "
                                  f"{PLACEHOLDER_POLICIES}: the checkpoint's metadata is damaged.")
        known = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in data.items() if k in known})


def save_phi_checkpoint(path: str | Path, phi: torch.nn.Module, meta: PhiMeta) -> Path:
    """Write phi and its metadata atomically as one safetensors file."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in phi.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: meta.to_json()})
    return path


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n < SAFETENSORS_HEADER_LIMIT and head[8:9] == b"{"


def _read_zscir(path: Path) -> tuple[dict, PhiMeta]:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is a damaged safetensors file ({exc}): re-save or re-download it.") from exc
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path} has no zscir metadata: it is not a zscir phi checkpoint.")
    return state, PhiMeta.from_json(metadata[METADATA_KEY], path)


def _strip_module(state: dict) -> dict:
    return {k.removeprefix("module."): v for k, v in state.items()}


def _read_official(path: Path, method: str | None) -> tuple[dict, PhiMeta]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(
            f"{path} could not be read as a checkpoint ({type(exc).__name__}: {exc}); it may be truncated "
            "or not a phi checkpoint."
        ) from exc
    if not isinstance(blob, dict):
        raise CheckpointError(f"{path} holds a {type(blob).__name__}, not a checkpoint dictionary.")
    if "Phi" in blob:
        state, method = blob["Phi"], method or "lincir"
        d_in, hidden = state["layers.0.weight"].shape[1], state["layers.0.weight"].shape[0]
        width = state["layers.6.weight"].shape[0]
    elif "state_dict_img2text" in blob:
        state, method = _strip_module(blob["state_dict_img2text"]), method or "pic2word"
        d_in, hidden = state["layers.0.0.weight"].shape[1], state["layers.0.0.weight"].shape[0]
        width = state["fc_out.weight"].shape[0]
    else:
        raise CheckpointError(
            f"{path} has keys {sorted(blob)[:8]}: expected 'Phi' (LinCIR/SEARLE) or 'state_dict_img2text' "
            "(Pic2Word), or a zscir safetensors checkpoint."
        )
    if METHOD_PHI_KIND.get(method) != ("lincir" if "Phi" in blob else "pic2word"):
        raise CheckpointError(f"{path}: method '{method}' does not match the checkpoint's phi form.")
    meta = PhiMeta(
        method=method, phi_kind=METHOD_PHI_KIND[method], embed_dim=int(d_in), width=int(width),
        hidden_dim=int(hidden), placeholder=METHOD_PLACEHOLDER[method], template=DEFAULT_TEMPLATES[method],
        source=f"official-{method}", placeholder_policy=METHOD_PLACEHOLDER_POLICY[method],
        training={"epoch": blob["epoch"]} if isinstance(blob.get("epoch"), int) else {},
    )
    return state, meta


def check_dims(meta: PhiMeta, backbone, path: Path) -> None:
    """A phi for another backbone is refused, naming both sets of dims."""
    if (meta.embed_dim, meta.width) != (backbone.embed_dim, backbone.width):
        raise CheckpointError(
            f"{path} has phi dims D={meta.embed_dim}, W={meta.width} but backbone {backbone.name} "
            f"({backbone.source}) has D={backbone.embed_dim}, W={backbone.width}: use the backbone the "
            "phi was trained with."
        )


def load_phi_checkpoint(path: str | Path, backbone=None, method: str | None = None) -> tuple[torch.nn.Module, PhiMeta]:
    """phi (eval mode) and its metadata, from a zscir checkpoint or an official one.

    method tells an official `{'Phi': ...}` file apart: "lincir" (default) or "searle".
    With a backbone, its dims are checked against phi's.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    state, meta = _read_zscir(path) if _is_safetensors(path) else _read_official(path, method)
    if backbone is not None:
        check_dims(meta, backbone, path)
    phi = build_phi(meta.phi_kind, meta.embed_dim, meta.width, meta.hidden_dim)
    try:
        phi.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit a {meta.phi_kind} phi: {exc}") from exc
    return phi.eval(), meta


def meta_for(phi: torch.nn.Module, backbone, method: str, **extra) -> PhiMeta:
    """PhiMeta for a phi trained (or built) on this backbone with the method's default placeholder/template."""
    if METHOD_PHI_KIND.get(method) != phi_kind(phi):
        raise CheckpointError(f"method '{method}' needs a {METHOD_PHI_KIND.get(method)} phi, got {phi_kind(phi)}.")
    return PhiMeta(
        method=method, phi_kind=phi_kind(phi), embed_dim=phi.embed_dim, width=phi.width,
        hidden_dim=phi.hidden_dim, backbone_name=backbone.name, backbone_pretrained=backbone.pretrained,
        backbone_activation=getattr(backbone, "activation", None),
        placeholder=METHOD_PLACEHOLDER[method], template=DEFAULT_TEMPLATES[method],
        **{"placeholder_policy": METHOD_PLACEHOLDER_POLICY[method], **extra},
    )
