"""Frozen open_clip backbones and their preprocessing, loaded from a name, a tag, a file or a JSON.

`load_backbone("ViT-L-14", "openai")` gives the model the papers use; `load_backbone("zscir-tiny")` a tiny
random one for tests; `load_backbone("path/to/arch.json", "weights.safetensors")` a custom architecture
(the shapes-world CLIP is defined this way); `load_backbone("path/to/hf-folder")` a Hugging Face `transformers`
CLIP checkpoint folder converted to open_clip, and `load_backbone("bge-vl-base")` a preset naming one
(`zscir_train.hf_clip`).

Activation. OpenAI's CLIP (what LinCIR, SEARLE and Pic2Word are trained on) uses QuickGELU in its MLPs;
open_clip >= 2.24 builds a plain name ("ViT-L-14") with nn.GELU even for the `openai` tag and only warns.
`load_backbone` builds every backbone with the activation its weights were trained with, whatever the
open_clip version: QuickGELU for the `openai` tag, any tag open_clip flags `quick_gelu`, an OpenAI-format
file (OpenAI's TorchScript download, or a state dict carrying its `input_resolution`/`context_length`/
`vocab_size` entries) and a TAT checkpoint tuned from one of those; other files follow the model config
(pass a `-quickgelu` name, or `activation=`, for a plain state dict of OpenAI weights). `activation=`
overrides the choice; overriding it against the weights warns, naming both.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch

from zscir_infer.contract import ACTIVATIONS, GELU, QUICK_GELU, PreprocessConfig, PreprocessConfigError
from zscir_infer.errors import ZscirError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
ARCH_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
OPENAI_TAG = "openai"
# Entries of OpenAI's TorchScript state dict that open_clip's own state dicts never hold.
OPENAI_STATE_KEYS = ("input_resolution", "context_length", "vocab_size")
TORCHSCRIPT_MARKERS = ("/constants.pkl", "/code/")  # members of a TorchScript zip archive
TAT_FORMAT = "zscir-tat"  # zscir_train.training.tat's checkpoint format (metadata key "zscir")
CLIP_FT_FORMAT = "zscir-clip"  # zscir_train.training.sum_tune's: a whole CLIP fine-tuned for the sum query
TUNED_FORMATS = (TAT_FORMAT, CLIP_FT_FORMAT)  # whole-CLIP checkpoints recording their activation and base
OPEN_CLIP_MISMATCH_WARNING = "QuickGELU mismatch"  # open_clip's own, replaced by ActivationMismatchWarning


class BackboneError(ZscirError, ValueError):
    """A backbone cannot be built from what was given; the message says what to change."""


class ActivationMismatchWarning(UserWarning):
    """The model is built with another activation than its weights were trained with (forced by the caller)."""


@functools.cache
def register_model_configs() -> None:
    """Make zscir's architectures (zscir-tiny, world-clip) known to open_clip; once per process."""
    open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass
class Backbone:
    model: torch.nn.Module  # open_clip CLIP, frozen, eval mode
    name: str  # registered open_clip name, or the stem of a custom architecture JSON
    pretrained: str | None  # tag, local weights path, or None for random weights
    embed_dim: int  # D: projected embedding size (image and text)
    width: int  # W: text transformer width (phi's output, one token embedding)
    context_length: int
    preprocess: PreprocessConfig
    # the eval transform `preprocess` describes: PIL image -> [3, H, W]; open_clip's, or SEARLE's TargetPad
    # in front of it (zscir_train.targetpad.with_preprocess)
    transform: object = field(repr=False)
    tokenizer: object = field(repr=False)  # open_clip tokenizer: list[str] -> LongTensor [B, context_length]
    arch: dict = field(default_factory=dict, repr=False)  # the open_clip model config
    activation: str | None = None  # the towers' MLP activation: quick_gelu | gelu (None: neither, e.g. timm)
    huggingface: dict | None = None  # set when converted from a Hugging Face CLIP folder (zscir_train.hf_clip)

    @property
    def source(self) -> str:
        return self.pretrained or "random-init"


def _register_architecture(name: str) -> str:
    """Accept a path to an open_clip architecture JSON: register it and return its model name."""
    path = Path(name)
    if path.suffix != ".json":
        return name
    if not path.is_file():
        raise BackboneError(f"Architecture file {path} does not exist: pass an open_clip model name or a JSON path.")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BackboneError(f"Architecture file {path} is not valid JSON: {exc}") from exc
    missing = [k for k in ARCH_KEYS if k not in cfg]
    if missing:
        raise BackboneError(f"Architecture file {path} lacks {missing}: it must be an open_clip model config.")
    open_clip.add_model_config(path)
    return path.stem


def _check_pretrained(name: str, pretrained: str | None) -> None:
    if pretrained is None or os.path.isfile(pretrained):
        return
    if Path(pretrained).suffix in {".pt", ".pth", ".bin", ".safetensors"}:
        raise BackboneError(f"Pretrained weights file {pretrained} does not exist.")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise BackboneError(
            f"'{pretrained}' is neither a weights file nor a pretrained tag of {name}; "
            f"known tags: {', '.join(tags) or 'none (custom architecture: pass a weights file)'}."
        )


def is_torchscript(path: Path) -> bool:
    """A TorchScript zip archive (how OpenAI publishes its CLIP weights)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(marker in n for n in archive.namelist() for marker in TORCHSCRIPT_MARKERS)


def _safetensors_zscir_metadata(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("zscir", "{}"))
    except (OSError, ValueError):  # damaged or foreign: open_clip reports it when it loads the file
        return {}


def _file_activation(path: Path) -> str | None:
    """QUICK_GELU for OpenAI-format weights (or a TAT tuned from them); None when the file does not say."""
    if is_torchscript(path):
        return QUICK_GELU
    if path.suffix == ".safetensors":
        meta = _safetensors_zscir_metadata(path)
        if meta.get("format") not in TUNED_FORMATS:
            return None
        if meta.get("activation") in ACTIVATIONS:
            return meta["activation"]
        base, base_pretrained = meta.get("base"), meta.get("base_pretrained")
        if not base or not base_pretrained or Path(base_pretrained).resolve() == path.resolve():
            return None
        return weights_activation(base, base_pretrained) if base in open_clip.list_models() else None
    try:  # memory-mapped: only the keys are read
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # legacy or foreign formats: open_clip reports them when it loads the file
        return None
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return QUICK_GELU if any(k in state for k in OPENAI_STATE_KEYS) else None


def weights_activation(name: str, pretrained: str | None) -> str | None:
    """The activation the weights were trained with, where the weights say; None where they do not."""
    if pretrained is None:
        return None
    if os.path.isfile(pretrained):
        return _file_activation(Path(pretrained))
    if pretrained == OPENAI_TAG:
        return QUICK_GELU
    return QUICK_GELU if (open_clip.get_pretrained_cfg(name, pretrained) or {}).get("quick_gelu") else None


def config_activation(name: str) -> str:
    return QUICK_GELU if (open_clip.get_model_config(name) or {}).get("quick_gelu") else GELU


def choose_activation(name: str, pretrained: str | None, activation: str | None = None) -> str:
    """The activation to build `name` with: `activation` if given, else the weights', else the config's.

    A forced `activation` that contradicts the weights warns (ActivationMismatchWarning), naming both.
    """
    trained = weights_activation(name, pretrained)
    if activation is None:
        return trained or config_activation(name)
    if activation not in ACTIVATIONS:
        raise BackboneError(f"Unknown activation '{activation}': use one of {ACTIVATIONS}, or None for the weights'.")
    if trained is not None and trained != activation:
        warnings.warn(
            f"{name} with weights '{pretrained}': the weights were trained with {trained} but the model is built "
            f"with {activation} as requested; its features differ from the weights' own model (drop the "
            f"activation override to get {trained}).", ActivationMismatchWarning, stacklevel=3,
        )
    return activation


def model_activation(model: torch.nn.Module) -> str | None:
    """The activation the built model actually uses (QuickGELU before GELU: a QuickGELU model has no GELU)."""
    modules = list(model.modules())
    if any(type(m).__name__ == "QuickGELU" for m in modules):
        return QUICK_GELU
    if any(isinstance(m, torch.nn.GELU) for m in modules):
        return GELU
    return None


def _activation_overrides(name: str, activation: str) -> dict:
    """create_model arguments that give `activation`; force_quick_gelu exists in every open_clip 2.x/3.x."""
    if activation == config_activation(name):
        return {}
    return {"force_quick_gelu": True} if activation == QUICK_GELU else {"quick_gelu": False}


def _arch(name: str, activation: str) -> dict:
    """The open_clip model config the model was built from (with the activation it was given)."""
    arch = open_clip.get_model_config(name) or {}
    if activation != config_activation(name):
        arch["quick_gelu"] = activation == QUICK_GELU
    return arch


def _openai_file(pretrained: str | None) -> bool:
    """OpenAI-format weights open_clip's loader refuses: a TorchScript archive, or a state dict with its extras."""
    if pretrained is None or not os.path.isfile(pretrained) or Path(pretrained).suffix == ".safetensors":
        return False
    return _file_activation(Path(pretrained)) == QUICK_GELU


def _read_openai_state(path: str, model: torch.nn.Module) -> dict:
    """OpenAI's tensors without its extras (its config scalars, the traced causal mask)."""
    if is_torchscript(Path(path)):
        # torch.load(weights_only=True), open_clip's reader, refuses TorchScript archives (OpenAI's own
        # downloads): read their tensors as OpenAI's clip.load does, with torch.jit.load.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")  # "deprecated"
            state = torch.jit.load(path, map_location="cpu").state_dict()
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    persistent = set(model.state_dict())
    extras = set(OPENAI_STATE_KEYS) | {n for n, _ in model.named_buffers() if n not in persistent}
    return {k.removeprefix("module."): v for k, v in state.items() if k.removeprefix("module.") not in extras}


def _create(name: str, pretrained: str | None, device, activation: str):
    """open_clip's model and eval transform, with OpenAI-format files read here (open_clip refuses them)."""
    overrides = _activation_overrides(name, activation)
    openai_file = _openai_file(pretrained)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=OPEN_CLIP_MISMATCH_WARNING)
        model, _, transform = open_clip.create_model_and_transforms(
            name, pretrained=None if openai_file else pretrained, device=device, **overrides)
    if openai_file:
        try:
            model.load_state_dict(_read_openai_state(pretrained, model), strict=True)
        except RuntimeError as exc:
            raise BackboneError(f"{pretrained} does not hold {name}'s weights: {exc}") from exc
    return model, transform


def _text_width(model: torch.nn.Module) -> int:
    if hasattr(model, "token_embedding"):
        return model.token_embedding.weight.shape[1]
    raise BackboneError(
        f"{type(model).__name__} has no CLIP text transformer (token_embedding): pseudo-token composition "
        "needs an open_clip CLIP model with the standard text tower."
    )


def _embed_dim(model: torch.nn.Module) -> int:
    proj = model.text_projection
    return int(proj.out_features if isinstance(proj, torch.nn.Linear) else proj.shape[1])


def _load_hf_backbone(name: str, pretrained: str | None, device, activation: str | None) -> Backbone:
    """A Hugging Face CLIP folder (or a preset naming one) as an open_clip Backbone.

    pretrained: None (the folder's weights), or a weights file to load instead: a Hugging Face CLIPModel state
    dict, or an open_clip one of the same architecture (a TAT or fine-tuned checkpoint made from this folder).
    """
    from open_clip.tokenizer import SimpleTokenizer

    from zscir_train.hf_clip import PRESETS, convert_state_dict, load_hf_clip, read_state, resolve_preset

    folder = resolve_preset(name) if name in PRESETS else Path(name)
    hf = load_hf_clip(folder, activation, device, hub_id=PRESETS.get(name))
    if activation is not None and activation != hf.activation:
        warnings.warn(f"{name}: the weights were trained with {hf.activation} but the model is built with "
                      f"{activation} as requested; its features differ from the checkpoint's own model.",
                      ActivationMismatchWarning, stacklevel=3)
    weights = str(folder / hf.info["weights"])
    if pretrained is not None and Path(pretrained).resolve() != Path(weights).resolve():
        if not os.path.isfile(pretrained):
            raise BackboneError(f"Pretrained weights file {pretrained} does not exist.")
        state = read_state(Path(pretrained))
        if any(k.startswith(("text_model.", "vision_model.")) for k in state):
            state = convert_state_dict(state, hf.arch, Path(pretrained))
        try:
            hf.model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BackboneError(f"{pretrained} does not hold weights of {name}'s architecture: {exc}") from exc
        weights = pretrained
    hf.model.eval().requires_grad_(False)
    pp = hf.preprocess
    transform = open_clip.image_transform(pp.image_size, is_train=False, mean=pp.mean, std=pp.std,
                                          resize_mode=pp.resize_mode, interpolation=pp.interpolation)
    return Backbone(
        model=hf.model, name=str(name), pretrained=weights, embed_dim=_embed_dim(hf.model),
        width=_text_width(hf.model), context_length=hf.context_length, preprocess=pp, transform=transform,
        tokenizer=SimpleTokenizer(context_length=hf.context_length), arch=hf.arch,
        activation=model_activation(hf.model), huggingface=hf.info,
    )


def load_backbone(name: str, pretrained: str | None = None, *, device: str | torch.device = "cpu",
                  activation: str | None = None) -> Backbone:
    """An open_clip CLIP, frozen in eval mode, with its preprocessing and tokenizer.

    name: a registered open_clip name ("ViT-L-14"), one of zscir's configs ("zscir-tiny", "world-clip"),
    or a path to an architecture JSON; or a Hugging Face CLIP checkpoint folder (config.json + weights) or a
    preset naming one (bge-vl-base, bge-vl-large), converted by `zscir_train.hf_clip`. pretrained: an
    open_clip tag ("openai"), a local weights file, or None for random weights (tests, benchmarks of speed;
    for a Hugging Face folder: its own weights). activation: "quick_gelu" or "gelu" to override the one the
    weights were trained with (module docstring); None: the weights'.
    """
    from zscir_train.hf_clip import PRESETS, is_hf_folder

    if str(name) in PRESETS or is_hf_folder(name):
        return _load_hf_backbone(str(name), pretrained, device, activation)
    register_model_configs()
    name = _register_architecture(str(name))
    if name not in open_clip.list_models():
        raise BackboneError(
            f"Unknown model '{name}': not an open_clip architecture. Use one of open_clip.list_models() "
            f"(e.g. ViT-B-32, ViT-L-14), zscir's {sorted(p.stem for p in MODEL_CONFIG_DIR.glob('*.json'))}, "
            "or a path to an architecture JSON."
        )
    _check_pretrained(name, pretrained)
    activation = choose_activation(name, pretrained, activation)
    try:
        model, transform = _create(name, pretrained, device, activation)
    except RuntimeError as exc:
        if "download" in str(exc).lower():
            raise BackboneError(
                f"Could not fetch pretrained weights '{pretrained}' for {name} (no network?). Download the "
                "weights on a connected machine and pass the file with --pretrained PATH, or fill the "
                "Hugging Face cache and set HF_HUB_OFFLINE=1."
            ) from exc
        raise
    model.eval().requires_grad_(False)
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp["size"]
    try:
        preprocess = PreprocessConfig(
            image_size=int(size if isinstance(size, int) else size[0]),
            mean=tuple(float(m) for m in pp["mean"]),
            std=tuple(float(s) for s in pp["std"]),
            interpolation=pp.get("interpolation", "bicubic"),
            resize_mode=pp.get("resize_mode", "shortest"),
            fill_color=int(pp.get("fill_color", 0)),
        )
    except PreprocessConfigError as exc:
        raise BackboneError(f"{name}: open_clip's preprocessing is not one zscir can export ({exc}).") from exc
    tokenizer = open_clip.get_tokenizer(name)
    return Backbone(
        model=model,
        name=name,
        pretrained=pretrained,
        embed_dim=_embed_dim(model),
        width=_text_width(model),
        context_length=int(model.context_length),
        preprocess=preprocess,
        transform=transform,
        tokenizer=tokenizer,
        arch=_arch(name, activation),
        activation=model_activation(model),
    )
