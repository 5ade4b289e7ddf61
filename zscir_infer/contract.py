"""The one contract between training, export and the runtime (torch-free; DESIGN §3).

Everything that crosses a package boundary is defined here once: the query method names, the export
sources, the graph and tensor names of a bundle, the preprocessing config, the prompt template syntax,
the sha256 of a file and where the manifest's JSON Schema lives. `zscir_train`, `zscir_export`,
`zscir_eval` and the runtime import these names; none of them spells a method or a tensor name itself.

Templates. A prompt template is text with the fields `{caption}` (the modification text), optionally
`{placeholder}` (the pseudo-token word: `$` for LinCIR/SEARLE, `*` for Pic2Word; it comes from the
bundle or checkpoint) and `{domain}` (ImageNet-R's domain conversion). The placeholder may also be
written out literally (`a photo of $ that {caption}`, as the bundles' manifests and the papers spell
it). `fill_template` is the only function that turns a template into a prompt, for `zscir-infer query
--template`, `zscir-eval --template`, the runtime and the PyTorch reference alike.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import string
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path

from zscir_infer.errors import ZscirError

# --- query methods ---------------------------------------------------------------------------------------
PHI = "phi"  # the bundle's pseudo-token query encoder (LinCIR, SEARLE, Pic2Word)
SLERP, IMAGE, TEXT, AVERAGE = "slerp", "image", "text", "average"
# normalize(raw image feature + raw text feature): BGE-VL-CLIP's (MegaPairs) composed query, as its evaluation
# code computes it (FlagEmbedding research/BGE_VL/eval/flag_mmret.py, encode_mm_it: get_text_features +
# get_image_features, then F.normalize). The features are the UNNORMALIZED projected ones, which is what a
# bundle's image_encoder and text_encoder graphs output (manifest `normalized_output: false`); the sum of
# the two unit vectors would be the `average` baseline instead, which differs whenever the norms differ.
SUM = "sum"
METHODS = (PHI, SLERP, IMAGE, TEXT, AVERAGE, SUM)  # every way the runtime composes a query
TRAINING_FREE_METHODS = (SLERP, IMAGE, TEXT, AVERAGE, SUM)  # need only the image and text encoders
BASELINES = (IMAGE, TEXT, AVERAGE)  # what every evaluation reports beside the method

# --- what a bundle is exported from ----------------------------------------------------------------------
LINCIR, SEARLE, PIC2WORD = "lincir", "searle", "pic2word"
PHI_SOURCES = (LINCIR, SEARLE, PIC2WORD)  # checkpoints holding a phi network
EXPORT_SOURCES = (*PHI_SOURCES, SLERP, SUM)  # `zscir-export --method`
ENCODER_METHODS = (SLERP, SUM)  # bundles of the two encoders alone; the manifest's method is their default query
PHI_KINDS = ("lincir", "pic2word")  # the two phi architectures (SEARLE's phi is LinCIR's form)

# --- graphs and tensors of a bundle (the manifest records them; the runtime reads them from there) -------
IMAGE_ENCODER, QUERY_ENCODER, TEXT_ENCODER = "image_encoder", "query_encoder", "text_encoder"
PIXELS, TOKEN_IDS = "pixels", "token_ids"  # float32 [B, 3, S, S]; int64 [B, 77]
IMAGE_FEATURES, QUERY_FEATURES, TEXT_FEATURES = "image_features", "query_features", "text_features"
GRAPH_INPUTS = {IMAGE_ENCODER: (PIXELS,), QUERY_ENCODER: (IMAGE_FEATURES, TOKEN_IDS), TEXT_ENCODER: (TOKEN_IDS,)}
PRECISIONS = ("fp32", "fp16", "int8")

# --- composition constants (numpy and torch implement the same formulas) ---------------------------------
SLERP_PARALLEL_COS = 0.9995  # above this |cos|, slerp falls back to normalized linear interpolation
DEFAULT_SLERP_ALPHA = 0.8  # text weight; the Slerp paper reports 0.8-0.9
NORM_EPS = 1e-12  # torch.nn.functional.normalize's eps

# --- files -----------------------------------------------------------------------------------------------
BUNDLE_FORMAT = "zscir-bundle"
BUNDLE_FORMAT_VERSION = 1  # the newest bundle layout this zscir writes and reads
MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "manifest.schema.json"
HASH_CHUNK = 1 << 22


def manifest_schema_path() -> Path:
    """The JSON Schema of a bundle's manifest.json: one file, shipped in this package."""
    return Path(str(resources.files("zscir_infer") / MANIFEST_SCHEMA))


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in chunks (bundles hold gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --- preprocessing ---------------------------------------------------------------------------------------
INTERPOLATIONS = ("bicubic", "bilinear")
TARGETPAD = "targetpad"  # SEARLE's target-pad: pad to target_ratio, then "shortest" (see PreprocessConfig)
RESIZE_MODES = ("shortest", "squash", "longest", TARGETPAD)
CROP_BY_RESIZE_MODE = {"shortest": "center", "squash": "none", "longest": "center_or_pad", TARGETPAD: "center"}
PREPROCESS_KEYS = ("image_size", "mean", "std", "interpolation", "resize_mode", "fill_color", "target_ratio")
CLIP_PREPROCESS = "clip"  # the backbone's own open_clip eval transform
PREPROCESS_CHOICES = (CLIP_PREPROCESS, TARGETPAD)  # `zscir-export --preprocess`
SEARLE_TARGET_RATIO = 1.25  # SEARLE's validate.py and generate_test_submission.py: targetpad_transform(1.25, ...)


class PreprocessConfigError(ZscirError, ValueError):
    """A preprocessing config (from a manifest) is invalid; the message names the field."""


@dataclass(frozen=True)
class PreprocessConfig:
    """open_clip's eval transform as data (or SEARLE's target-pad in front of it); the manifest stores `to_dict()`.

    resize_mode "targetpad" (SEARLE's `TargetPad` + `targetpad_transform`) pads the decoded RGB image, then
    continues exactly as "shortest". With w, h the image size and r = target_ratio, in IEEE double:
    - if max(w, h) / min(w, h) < r: no pad;
    - else t = max(w, h) / r; pad_x = max(trunc((t - w) / 2), 0); pad_y = max(trunc((t - h) / 2), 0)
      (trunc: toward zero, as Python's int()); pad_x columns go on the left AND on the right, pad_y rows
      on the top AND on the bottom (the image stays centered; the result is (w + 2 pad_x) x (h + 2 pad_y));
      only the short side gets a pad, so the padded ratio is r up to one pixel;
    - pad value: fill_color in every channel (0, black, is SEARLE's);
    then the shortest-side resize to image_size and the center crop, as for "shortest".
    target_ratio is present exactly when resize_mode is "targetpad" (to_dict omits it otherwise, so the
    manifests written before it existed read and write unchanged).
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0
    target_ratio: float | None = None

    def __post_init__(self):
        if not isinstance(self.image_size, int) or self.image_size <= 0:
            raise PreprocessConfigError(f"preprocess.image_size must be a positive int, got {self.image_size!r}.")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise PreprocessConfigError(f"preprocess.{name} must have 3 values (R, G, B), got {value!r}.")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if any(s <= 0 for s in self.std):
            raise PreprocessConfigError(f"preprocess.std must be positive, got {self.std!r}.")
        if self.interpolation not in INTERPOLATIONS:
            raise PreprocessConfigError(
                f"preprocess.interpolation {self.interpolation!r} is not one of {list(INTERPOLATIONS)}."
            )
        if self.resize_mode not in RESIZE_MODES:
            raise PreprocessConfigError(f"preprocess.resize_mode {self.resize_mode!r} is not one of {RESIZE_MODES}.")
        self._check_target_ratio()

    def _check_target_ratio(self) -> None:
        ratio = self.target_ratio
        if self.resize_mode != TARGETPAD:
            if ratio is not None:
                raise PreprocessConfigError(
                    f"preprocess.target_ratio {ratio!r} is given but resize_mode is {self.resize_mode!r}: it applies "
                    f"only to resize_mode {TARGETPAD!r}; drop it or set the mode."
                )
            return
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
            raise PreprocessConfigError(
                f"preprocess.target_ratio must be a number >= 1 (long side / short side) for resize_mode "
                f"{TARGETPAD!r}, got {ratio!r}; SEARLE uses {SEARLE_TARGET_RATIO}."
            )
        object.__setattr__(self, "target_ratio", float(ratio))

    @property
    def crop(self) -> str:
        return CROP_BY_RESIZE_MODE[self.resize_mode]

    def with_targetpad(self, target_ratio: float = SEARLE_TARGET_RATIO, fill_color: int = 0) -> PreprocessConfig:
        """This "shortest" config with SEARLE's target-pad in front (fill 0, black, as SEARLE pads)."""
        if self.resize_mode not in ("shortest", TARGETPAD):
            raise PreprocessConfigError(
                f"targetpad continues with the shortest-side resize and center crop, but this preprocessing "
                f"resizes {self.resize_mode!r}: use the backbone's own preprocessing (clip)."
            )
        return replace(self, resize_mode=TARGETPAD, target_ratio=target_ratio, fill_color=fill_color)

    def to_dict(self) -> dict:
        d = {**asdict(self), "mean": list(self.mean), "std": list(self.std), "crop": self.crop}
        if self.target_ratio is None:
            del d["target_ratio"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        fields = {k: v for k, v in d.items() if k != "crop"}
        unknown = set(fields) - set(PREPROCESS_KEYS)
        if unknown:
            raise PreprocessConfigError(f"preprocess has unknown keys {sorted(unknown)}; expected {PREPROCESS_KEYS}.")
        missing = {"image_size", "mean", "std"} - set(fields)
        if missing:
            raise PreprocessConfigError(f"preprocess lacks {sorted(missing)}; the manifest is incomplete.")
        cfg = cls(**fields)
        if "crop" in d and d["crop"] != cfg.crop:
            raise PreprocessConfigError(
                f"preprocess.crop {d['crop']!r} contradicts resize_mode {cfg.resize_mode!r} (crop {cfg.crop!r})."
            )
        return cfg


# --- prompt templates ------------------------------------------------------------------------------------
CAPTION_FIELD = "{caption}"
TEMPLATE_FIELDS = ("placeholder", "caption", "domain")


class TemplateError(ZscirError, ValueError):
    """A prompt template cannot be used; the message says why and what to write instead."""


def template_fields(template: str) -> set[str]:
    """The `{field}` names in a template; unknown ones are a TemplateError."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:  # an unmatched brace
        raise TemplateError(f"Template {template!r} is not a valid template ({exc}); write literal braces as {{{{ }}}}.") from exc
    unknown = fields - set(TEMPLATE_FIELDS)
    if unknown:
        raise TemplateError(
            f"Template {template!r} has unknown field(s) {sorted(unknown)}; use {{caption}}, {{placeholder}} "
            "and, for ImageNet-R, {domain}."
        )
    return fields


def fill_template(template: str, caption: str, placeholder: str | None, domain: str | None = None) -> str:
    """The prompt a template gives for one caption.

    placeholder: the pseudo-token word for the phi method (`$`, `*`), which the template must hold, as
    `{placeholder}` or written out; None for the methods without a pseudo-token, where a `{placeholder}`
    field renders as nothing and the spaces around it collapse (the text encoder sees the caption alone).
    `{domain}` must be filled exactly when the template has it.
    """
    fields = template_fields(template)
    if "caption" not in fields and "domain" not in fields:
        raise TemplateError(f"Template {template!r} has no '{CAPTION_FIELD}' field: the text would be dropped.")
    if ("domain" in fields) != (domain is not None):
        raise TemplateError(
            f"Template {template!r} has {{domain}}, which only ImageNet-R fills." if domain is None
            else f"Template {template!r} has no {{domain}} field for the domain {domain!r}."
        )
    if placeholder is not None and "placeholder" not in fields and placeholder not in template:
        raise TemplateError(
            f"Template {template!r} does not contain the placeholder {placeholder!r}: the image token would be "
            f"dropped. Put {{placeholder}} (or {placeholder}) where the image belongs, e.g. "
            f"'a photo of {{placeholder}} that {{caption}}'."
        )
    text = template.format(placeholder=placeholder or "", caption=caption, domain=domain or "")
    return text if placeholder is not None or "placeholder" not in fields else re.sub(r"\s+", " ", text).strip()


# --- placeholder substitution and backbone activation (issue 13) -----------------------------------------
# Where phi's token replaces the placeholder, as each method's official code does it: LinCIR at every
# occurrence (a `where` over the ids), SEARLE and Pic2Word at the first occurrence only.
PLACEHOLDER_FIRST, PLACEHOLDER_ALL = "first", "all"
PLACEHOLDER_POLICIES = (PLACEHOLDER_FIRST, PLACEHOLDER_ALL)
METHOD_PLACEHOLDER_POLICY = {LINCIR: PLACEHOLDER_ALL, SEARLE: PLACEHOLDER_FIRST, PIC2WORD: PLACEHOLDER_FIRST}
# The CLIP towers' MLP activation: OpenAI's weights were trained with QuickGELU (x * sigmoid(1.702 x)).
QUICK_GELU, GELU = "quick_gelu", "gelu"
ACTIVATIONS = (QUICK_GELU, GELU)

# --- sequence-adaptive text graphs (the speed issue) -----------------------------------------------------
# CLIP's text transformer is causal and pools at the end-of-text token (the argmax of the ids), so the
# pooled feature depends only on the tokens up to EOT: a graph whose token_ids take a dynamic second axis
# (SEQUENCE, beside the batch axis) may be fed the ids cut to the batch's longest EOT position + 1. The
# manifest's `text.causal` says whether the bundle's text tower allows it (absent: false, full length).
BATCH_AXIS, SEQUENCE_AXIS = "batch", "sequence"  # symbolic dims of the manifest's tensor shapes
TEXT_TOWER_KEY, CAUSAL_KEY = "text", "causal"  # manifest["text"]["causal"]: bool
SEQUENCE_MULTIPLE = 8  # trimmed lengths are rounded up to a multiple of this (fewer distinct shapes)


def trimmed_sequence_length(longest_eot: int, context_length: int) -> int:
    """The id length a causal, EOT-pooled graph is fed: EOT position + 1, rounded up to SEQUENCE_MULTIPLE,
    capped at the context length (at least 1)."""
    needed = max(int(longest_eot) + 1, 1)
    return min(-(-needed // SEQUENCE_MULTIPLE) * SEQUENCE_MULTIPLE, int(context_length))


def trimmed_ids(ids, context_length: int | None = None):
    """ids [B, L] (numpy or torch) cut after the batch's last end-of-text token, at
    `trimmed_sequence_length` (EOT is the largest id, so its position is the row's argmax): a view, the
    ids themselves when nothing is cut or the batch is empty. The one cutting rule of the runtime, the
    export validation, the Triton tokenizers and the benchmarks."""
    if len(ids) == 0:
        return ids
    limit = ids.shape[1] if context_length is None else min(ids.shape[1], int(context_length))
    length = trimmed_sequence_length(int(ids.argmax(1).max()), limit)
    return ids if length == ids.shape[1] else ids[:, :length]
