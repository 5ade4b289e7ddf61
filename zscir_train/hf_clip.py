"""Hugging Face `transformers` CLIP checkpoints as open_clip models (BGE-VL, FashionCLIP, MetaCLIP, ...).

A Hugging Face CLIP folder holds `config.json` (model_type "clip", `text_config`, `vision_config`,
`projection_dim`), the weights (`model.safetensors`, or `pytorch_model.bin`), the tokenizer (`vocab.json` +
`merges.txt` and/or `tokenizer.json`) and `preprocessor_config.json`. `load_hf_clip` reads them WITHOUT
running any code from the folder (no `trust_remote_code`: an `auto_map` entry, as BGE-VL's MMRet_CLIP has,
is ignored; safetensors are parsed, a `.bin` is read with `torch.load(weights_only=True)`) and builds the
matching open_clip CLIP, so everything downstream (export, runtime, evaluation) is unchanged:

- architecture: vision (hidden_size -> width, num_hidden_layers -> layers, head width hidden/heads,
  intermediate_size -> mlp_ratio, patch_size, image_size), text (vocab_size, hidden_size, heads, layers,
  intermediate_size, max_position_embeddings -> context_length), projection_dim -> embed_dim;
- activation: `hidden_act` "quick_gelu" -> QuickGELU, "gelu" -> exact GELU; both towers must agree;
- weights: q/k/v projections concatenated into open_clip's in_proj, the projections (Linear without bias)
  transposed into open_clip's matrices, logit_scale as is (both store its log);
- text pooling: Hugging Face pools at argmax(ids) when `eos_token_id` is 2 (configs written before
  transformers PR #24773) and at the first `eos_token_id` otherwise; open_clip pools at argmax(ids). With
  the CLIP vocabulary the end-of-text id 49407 is the largest id, so both are the first end-of-text token;
  any other `eos_token_id` is refused;
- tokenizer: the folder's vocabulary and merges must be open_clip's (OpenAI CLIP's BPE: the bundle's
  tokenizer.json is built from open_clip's); a folder with another vocabulary or added tokens is refused.
  The ids then equal the Hugging Face CLIPTokenizer's up to the end-of-text token (what the pooled feature
  depends on; it pads with end-of-text where open_clip pads with 0), with one cleaning difference: open_clip
  unescapes HTML entities ("&amp;" -> "&"), the Hugging Face tokenizer does not;
- preprocessing from `preprocessor_config.json` (CLIPImageProcessor): shortest-side resize to
  `size.shortest_edge` + center crop `crop_size` (equal sizes), `resample` 3 bicubic / 2 bilinear,
  rescale 1/255, `image_mean`/`image_std`. Known one-pixel difference: Hugging Face's center crop starts at
  floor((side - S) / 2), open_clip's (and zscir's) at round((side - S) / 2) (half to even); they differ
  when side - S is 3 mod 4 (e.g. a 224 x 299 image), a one-pixel shift of the crop.

Presets: `bge-vl-base`, `bge-vl-large` name the published BGE-VL-CLIP checkpoints (MIT licence;
"BAAI/BGE-VL-base" is CLIP ViT-B/16, "BAAI/BGE-VL-large" ViT-L/14). Nothing is downloaded: a preset resolves
to `$ZSCIR_HF_MODELS/<BGE-VL-base>` or the Hugging Face hub cache ($HF_HUB_CACHE, $HF_HOME/hub or
~/.cache/huggingface/hub), else the error says how to download it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from zscir_infer.contract import ACTIVATIONS, GELU, INTERPOLATIONS, QUICK_GELU, PreprocessConfig, sha256_file
from zscir_infer.errors import ZscirError

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference
SHARDED_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
VOCAB_FILE, MERGES_FILE, TOKENIZER_FILE = "vocab.json", "merges.txt", "tokenizer.json"
MODELS_ENV = "ZSCIR_HF_MODELS"  # a folder holding downloaded checkpoints by their hub name (BGE-VL-base, ...)
PRESETS = {"bge-vl-base": "BAAI/BGE-VL-base", "bge-vl-large": "BAAI/BGE-VL-large"}
LEGACY_EOS_ID = 2  # Hugging Face pools at argmax(ids) for this eos_token_id (configs before PR #24773)
HF_ACTIVATIONS = {"quick_gelu": QUICK_GELU, "gelu": GELU}
RESAMPLE = {3: "bicubic", 2: "bilinear"}  # PIL.Image.Resampling values
RESCALE = 1 / 255
NORM_EPS = 1e-5  # open_clip's LayerNorm eps
# CLIPTextConfig / CLIPVisionConfig defaults, for keys a (hand-written) config leaves out.
TEXT_DEFAULTS = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                 "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                 "layer_norm_eps": 1e-5, "eos_token_id": LEGACY_EOS_ID}
VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu",
                   "layer_norm_eps": 1e-5}
IGNORED_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
# Hugging Face layer -> open_clip residual block (the q/k/v projections are handled apart)
LAYER_MAP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}


class HFClipError(ZscirError, ValueError):
    """A Hugging Face checkpoint folder that zscir cannot convert; the message names the file and value."""


@dataclass
class HFClip:
    """What `load_hf_clip` built: the open_clip model and everything the Backbone records."""

    model: torch.nn.Module
    arch: dict  # the open_clip model config it was built from
    activation: str
    preprocess: PreprocessConfig
    context_length: int
    info: dict  # the manifest's backbone.huggingface entry


def is_hf_folder(path: str | os.PathLike) -> bool:
    """A folder with a config.json: a Hugging Face checkpoint (whether zscir can convert it is decided later)."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file()


def hub_cache_dirs() -> list[Path]:
    """Where the Hugging Face hub keeps downloads: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    home = os.environ.get("HF_HOME")
    dirs.append(Path(home) / "hub" if home else Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def _hub_snapshot(cache: Path, hub_id: str) -> Path | None:
    """The snapshot `refs/main` names in a hub cache (else the only snapshot), if it holds a config."""
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file() and is_hf_folder(snapshots / ref.read_text().strip()):
        return snapshots / ref.read_text().strip()
    found = [p for p in snapshots.iterdir() if is_hf_folder(p)]
    return found[0] if len(found) == 1 else None


def resolve_preset(name: str) -> Path:
    """The local folder of a preset (`bge-vl-base`, `bge-vl-large`); HFClipError says how to get it."""
    hub_id = PRESETS[name]
    folder_name = hub_id.split("/")[1]
    tried = []
    if os.environ.get(MODELS_ENV):
        candidate = Path(os.environ[MODELS_ENV]) / folder_name
        if is_hf_folder(candidate):
            return candidate
        tried.append(str(candidate))
    for cache in hub_cache_dirs():
        snapshot = _hub_snapshot(cache, hub_id)
        if snapshot is not None:
            return snapshot
        tried.append(str(cache / f"models--{hub_id.replace('/', '--')}"))
    raise HFClipError(
        f"Preset {name!r} is the Hugging Face checkpoint {hub_id}, which is not on this machine (looked in "
        f"{', '.join(tried)}). zscir downloads nothing: on a connected machine run `huggingface-cli download "
        f"{hub_id} --local-dir DIR/{folder_name}`, then set {MODELS_ENV}=DIR (or pass --model DIR/{folder_name}), "
        "or fill the Hugging Face cache."
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HFClipError(f"{path} cannot be read as JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise HFClipError(f"{path} is not a JSON object.")
    return data


def read_config(folder: Path) -> tuple[dict, dict, dict]:
    """(config, text_config, vision_config) of a CLIPModel folder, defaults filled in."""
    path = folder / CONFIG_FILE
    config = _read_json(path)
    if config.get("model_type") not in ("clip", None) or "text_config" not in config or "vision_config" not in config:
        raise HFClipError(
            f"{path}: model_type {config.get('model_type')!r} with keys {sorted(config)[:12]}: zscir converts "
            "Hugging Face CLIPModel checkpoints (model_type 'clip', text_config and vision_config) only."
        )
    text = {**TEXT_DEFAULTS, **(config.get("text_config") or {})}
    vision = {**VISION_DEFAULTS, **(config.get("vision_config") or {})}
    return config, text, vision


def _activation(path: Path, text: dict, vision: dict) -> str:
    acts = {"text_config": text["hidden_act"], "vision_config": vision["hidden_act"]}
    for where, act in acts.items():
        if act not in HF_ACTIVATIONS:
            raise HFClipError(f"{path}: {where}.hidden_act {act!r} has no open_clip equivalent; zscir converts "
                              f"{sorted(HF_ACTIVATIONS)}.")
    if acts["text_config"] != acts["vision_config"]:
        raise HFClipError(f"{path}: text hidden_act {acts['text_config']!r} differs from vision hidden_act "
                          f"{acts['vision_config']!r}; an open_clip CLIP has one activation for both towers.")
    return HF_ACTIVATIONS[acts["text_config"]]


def _mlp_ratio(path: Path, where: str, cfg: dict) -> float:
    width, hidden = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
    ratio = hidden / width
    if int(width * ratio) != hidden:
        raise HFClipError(f"{path}: {where}.intermediate_size {hidden} is not int(hidden_size * ratio) for any "
                          f"ratio open_clip can express with hidden_size {width}.")
    return ratio


def open_clip_arch(folder: Path, config: dict, text: dict, vision: dict) -> tuple[dict, str]:
    """The open_clip model config equivalent to the Hugging Face one, and its activation."""
    path = folder / CONFIG_FILE
    activation = _activation(path, text, vision)
    for where, cfg in (("text_config", text), ("vision_config", vision)):
        if abs(float(cfg["layer_norm_eps"]) - NORM_EPS) > 1e-12:
            raise HFClipError(f"{path}: {where}.layer_norm_eps {cfg['layer_norm_eps']} differs from open_clip's "
                              f"LayerNorm eps {NORM_EPS}.")
        if int(cfg["hidden_size"]) % int(cfg["num_attention_heads"]):
            raise HFClipError(f"{path}: {where}.hidden_size {cfg['hidden_size']} is not a multiple of "
                              f"num_attention_heads {cfg['num_attention_heads']}.")
    if int(vision["num_channels"]) != 3:
        raise HFClipError(f"{path}: vision_config.num_channels {vision['num_channels']}: zscir feeds RGB (3).")
    eos = int(text["eos_token_id"])
    if eos not in (LEGACY_EOS_ID, int(text["vocab_size"]) - 1):
        raise HFClipError(
            f"{path}: text_config.eos_token_id {eos}: Hugging Face pools this model at the first id {eos}, "
            f"open_clip at the largest id (end-of-text, {int(text['vocab_size']) - 1}); they differ, so zscir refuses it."
        )
    projection = config.get("projection_dim", text.get("projection_dim", 512))
    arch = {
        "embed_dim": int(projection),
        "quick_gelu": activation == QUICK_GELU,
        "vision_cfg": {"image_size": int(vision["image_size"]), "layers": int(vision["num_hidden_layers"]),
                       "width": int(vision["hidden_size"]),
                       "head_width": int(vision["hidden_size"]) // int(vision["num_attention_heads"]),
                       "mlp_ratio": _mlp_ratio(path, "vision_config", vision), "patch_size": int(vision["patch_size"])},
        "text_cfg": {"context_length": int(text["max_position_embeddings"]), "vocab_size": int(text["vocab_size"]),
                     "width": int(text["hidden_size"]), "heads": int(text["num_attention_heads"]),
                     "layers": int(text["num_hidden_layers"]), "mlp_ratio": _mlp_ratio(path, "text_config", text)},
    }
    return arch, activation


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    sharded = [n for n in SHARDED_INDEXES if (folder / n).is_file()]
    hint = f" It holds a sharded checkpoint ({sharded[0]}): merge the shards into one file first." if sharded else ""
    raise HFClipError(f"{folder} has no {' or '.join(WEIGHT_FILES)}: it is not a complete Hugging Face CLIP "
                      f"checkpoint.{hint}")


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, without running code: safetensors parsed, `.bin` with weights_only."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors' and torch's own errors; the file is what is wrong
        raise HFClipError(f"{path} cannot be read as weights ({type(exc).__name__}: {exc}); a .bin must be a "
                          "plain state dict (torch.load weights_only=True), never a pickle with code.") from exc
    if not isinstance(state, dict):
        raise HFClipError(f"{path} holds a {type(state).__name__}, not a state dict.")
    return state


def _block(state: dict, hf: str, oc: str, out: dict) -> None:
    """One Hugging Face encoder layer -> one open_clip residual block (pops what it uses)."""
    q, k, v = (f"{hf}.self_attn.{n}_proj" for n in "qkv")
    out[f"{oc}.attn.in_proj_weight"] = torch.cat([state.pop(f"{p}.weight") for p in (q, k, v)])
    out[f"{oc}.attn.in_proj_bias"] = torch.cat([state.pop(f"{p}.bias") for p in (q, k, v)])
    for hf_name, oc_name in LAYER_MAP.items():
        for leaf in ("weight", "bias"):
            out[f"{oc}.{oc_name}.{leaf}"] = state.pop(f"{hf}.{hf_name}.{leaf}")


def convert_state_dict(hf_state: dict[str, torch.Tensor], arch: dict, source: Path) -> dict[str, torch.Tensor]:
    """A Hugging Face CLIPModel state dict as open_clip CLIP's; names what is missing or left over."""
    state = {k: v for k, v in hf_state.items() if k not in IGNORED_KEYS}
    out: dict[str, torch.Tensor] = {}
    try:
        t, v = "text_model", "vision_model"
        out["token_embedding.weight"] = state.pop(f"{t}.embeddings.token_embedding.weight")
        out["positional_embedding"] = state.pop(f"{t}.embeddings.position_embedding.weight")
        for i in range(arch["text_cfg"]["layers"]):
            _block(state, f"{t}.encoder.layers.{i}", f"transformer.resblocks.{i}", out)
        out["ln_final.weight"] = state.pop(f"{t}.final_layer_norm.weight")
        out["ln_final.bias"] = state.pop(f"{t}.final_layer_norm.bias")
        out["text_projection"] = state.pop("text_projection.weight").t().contiguous()
        out["visual.class_embedding"] = state.pop(f"{v}.embeddings.class_embedding")
        out["visual.conv1.weight"] = state.pop(f"{v}.embeddings.patch_embedding.weight")
        out["visual.positional_embedding"] = state.pop(f"{v}.embeddings.position_embedding.weight")
        out["visual.ln_pre.weight"] = state.pop(f"{v}.pre_layrnorm.weight")
        out["visual.ln_pre.bias"] = state.pop(f"{v}.pre_layrnorm.bias")
        for i in range(arch["vision_cfg"]["layers"]):
            _block(state, f"{v}.encoder.layers.{i}", f"visual.transformer.resblocks.{i}", out)
        out["visual.ln_post.weight"] = state.pop(f"{v}.post_layernorm.weight")
        out["visual.ln_post.bias"] = state.pop(f"{v}.post_layernorm.bias")
        out["visual.proj"] = state.pop("visual_projection.weight").t().contiguous()
        out["logit_scale"] = state.pop("logit_scale").reshape(())
    except KeyError as exc:
        raise HFClipError(f"{source} lacks the CLIPModel weight {exc.args[0]!r}: it is not a Hugging Face CLIPModel "
                          "checkpoint of the architecture its config.json describes.") from exc
    if state:
        raise HFClipError(f"{source} has weights zscir does not know how to map ({len(state)}: "
                          f"{sorted(state)[:6]}): not a plain CLIPModel; zscir refuses to drop them silently.")
    return out


def _size(value, path: Path, key: str) -> tuple[str, int]:
    """A Hugging Face size entry -> ("shortest", S) or ("square", S)."""
    if isinstance(value, int):
        return "shortest", value
    if isinstance(value, dict) and set(value) == {"shortest_edge"}:
        return "shortest", int(value["shortest_edge"])
    if isinstance(value, dict) and set(value) == {"height", "width"} and value["height"] == value["width"]:
        return "square", int(value["height"])
    raise HFClipError(f"{path}: {key} {value!r} is not a shortest edge or a square size; zscir cannot express it.")


def read_preprocess(folder: Path, image_size: int) -> PreprocessConfig:
    """The folder's CLIPImageProcessor settings as zscir's preprocessing (resize, crop, mean, std)."""
    path = folder / PREPROCESSOR_FILE
    if not path.is_file():
        raise HFClipError(f"{folder} has no {PREPROCESSOR_FILE}: the image preprocessing of the checkpoint is "
                          "unknown; copy it from the model's hub page.")
    cfg = _read_json(path)
    kind = cfg.get("image_processor_type") or cfg.get("feature_extractor_type") or "CLIPImageProcessor"
    if not kind.startswith("CLIP"):
        raise HFClipError(f"{path}: image processor {kind!r}; zscir reproduces CLIPImageProcessor only.")
    for flag in ("do_resize", "do_rescale", "do_normalize"):
        if not cfg.get(flag, True):
            raise HFClipError(f"{path}: {flag} is false; zscir's preprocessing always does it.")
    if abs(float(cfg.get("rescale_factor", RESCALE)) - RESCALE) > 1e-9:
        raise HFClipError(f"{path}: rescale_factor {cfg['rescale_factor']} is not 1/255.")
    resample = cfg.get("resample", 3)
    if resample not in RESAMPLE or RESAMPLE[resample] not in INTERPOLATIONS:
        raise HFClipError(f"{path}: resample {resample!r}; zscir resizes bicubic (3) or bilinear (2).")
    mode, size = _size(cfg.get("size", {"shortest_edge": image_size}), path, "size")
    crop = _size(cfg.get("crop_size", image_size), path, "crop_size")[1] if cfg.get("do_center_crop", True) else size
    if size != crop or crop != image_size:
        raise HFClipError(f"{path}: resize to {size} then crop {crop}, for a model of image_size {image_size}: zscir "
                          "resizes to the crop size (as open_clip); they must be equal.")
    return PreprocessConfig(image_size=image_size, mean=tuple(cfg.get("image_mean", ())),
                            std=tuple(cfg.get("image_std", ())), interpolation=RESAMPLE[resample],
                            resize_mode="shortest" if mode == "shortest" else "squash")


def _folder_vocab(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]], list[str], Path]:
    """(vocab, merges, added token strings, the file read) of the folder's tokenizer."""
    if (folder / TOKENIZER_FILE).is_file():
        path = folder / TOKENIZER_FILE
        data = _read_json(path)
        model = data.get("model") or {}
        if model.get("type") != "BPE":
            raise HFClipError(f"{path}: tokenizer model {model.get('type')!r}; CLIP's is BPE.")
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        added = [t["content"] for t in data.get("added_tokens", [])]
        return dict(model.get("vocab", {})), merges, added, path
    if (folder / VOCAB_FILE).is_file() and (folder / MERGES_FILE).is_file():
        vocab = _read_json(folder / VOCAB_FILE)
        lines = (folder / MERGES_FILE).read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
        added_file = folder / "added_tokens.json"
        added = list(_read_json(added_file)) if added_file.is_file() else []
        return vocab, merges, added, folder / VOCAB_FILE
    raise HFClipError(f"{folder} has no tokenizer ({TOKENIZER_FILE}, or {VOCAB_FILE} + {MERGES_FILE}): zscir must check "
                      "that the checkpoint's vocabulary is CLIP's before it exports open_clip's tokenizer for it.")


def check_tokenizer(folder: Path) -> None:
    """The folder's BPE must be open_clip's (the bundle's tokenizer.json is built from open_clip's), the two
    special tokens aside, which only differ in spelling (<|startoftext|> / <start_of_text>, same ids)."""
    from open_clip.tokenizer import SimpleTokenizer

    clip = SimpleTokenizer()
    vocab, merges, added, path = _folder_vocab(folder)
    special = {clip.sot_token_id, clip.eot_token_id}
    ours = {token: i for token, i in clip.encoder.items() if i not in special}
    theirs = {token: int(i) for token, i in vocab.items() if int(i) not in special}
    extra = [t for t in added if t in theirs or vocab.get(t) is None]
    if theirs != ours or len(vocab) != len(clip.encoder) or extra:
        differ = sorted(set(theirs.items()) ^ set(ours.items()))[:4]
        raise HFClipError(
            f"{path}: the tokenizer's vocabulary is not OpenAI CLIP's ({len(vocab)} tokens against "
            f"{len(clip.encoder)}; first differences {differ}{f'; added tokens {extra[:4]}' if extra else ''}). "
            "zscir's bundles tokenize with open_clip's CLIP BPE, which would give this model other ids."
        )
    ours_merges = sorted(clip.bpe_ranks, key=clip.bpe_ranks.__getitem__)
    if merges != ours_merges:
        first = next((i for i, (a, b) in enumerate(zip(merges, ours_merges, strict=False)) if a != b),
                     min(len(merges), len(ours_merges)))
        raise HFClipError(f"{path}: the tokenizer's BPE merges differ from OpenAI CLIP's (at merge {first} of "
                          f"{len(merges)}); zscir's bundles tokenize with open_clip's CLIP BPE.")


def load_hf_clip(folder: str | os.PathLike, activation: str | None = None, device: str | torch.device = "cpu",
                 hub_id: str | None = None) -> HFClip:
    """Build the open_clip CLIP equivalent to a Hugging Face CLIPModel folder (see the module docstring)."""
    import open_clip

    folder = Path(folder)
    config, text, vision = read_config(folder)
    arch, trained = open_clip_arch(folder, config, text, vision)
    if activation is not None and activation not in ACTIVATIONS:
        raise HFClipError(f"Unknown activation {activation!r}: use one of {ACTIVATIONS}.")
    built = activation or trained
    arch = {**arch, "quick_gelu": built == QUICK_GELU}
    preprocess = read_preprocess(folder, arch["vision_cfg"]["image_size"])
    check_tokenizer(folder)
    weights = weights_file(folder)
    state = convert_state_dict(read_state(weights), arch, weights)
    model = open_clip.model.CLIP(arch["embed_dim"], arch["vision_cfg"], arch["text_cfg"], quick_gelu=arch["quick_gelu"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise HFClipError(f"{weights} does not fit the architecture of {folder / CONFIG_FILE}: {exc}") from exc
    info = {"folder": folder.name if folder.name != "" else str(folder), "weights": weights.name,
            "weights_sha256": sha256_file(weights), "config_sha256": sha256_file(folder / CONFIG_FILE),
            "model_type": config.get("model_type", "clip"), "hub_id": hub_id}
    return HFClip(model.to(device), arch, trained, preprocess, arch["text_cfg"]["context_length"], info)
