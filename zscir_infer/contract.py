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
import os
import re
import string
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from zscir_infer.errors import ZscirError

# --- query methods ---------------------------------------------------------------------------------------
PHI = "phi"  # the bundle's pseudo-token query encoder (LinCIR, SEARLE, Pic2Word)
SLERP, IMAGE, TEXT, AVERAGE = "slerp", "image", "text", "average"
METHODS = (PHI, SLERP, IMAGE, TEXT, AVERAGE)  # every way the runtime composes a query
TRAINING_FREE_METHODS = (SLERP, IMAGE, TEXT, AVERAGE)  # need only the image and text encoders
BASELINES = (IMAGE, TEXT, AVERAGE)  # what every evaluation reports beside the method

# --- what a bundle is exported from ----------------------------------------------------------------------
LINCIR, SEARLE, PIC2WORD = "lincir", "searle", "pic2word"
PHI_SOURCES = (LINCIR, SEARLE, PIC2WORD)  # checkpoints holding a phi network
EXPORT_SOURCES = (*PHI_SOURCES, SLERP)  # `zscir-export --method`
PHI_KINDS = ("lincir", "pic2word")  # the two phi architectures (SEARLE's phi is LinCIR's form)

# --- graphs and tensors of a bundle (the manifest records them; the runtime reads them from there) -------
IMAGE_ENCODER, QUERY_ENCODER, TEXT_ENCODER = "image_encoder", "query_encoder", "text_encoder"
GRAPH_NAMES = (IMAGE_ENCODER, QUERY_ENCODER, TEXT_ENCODER)
PIXELS, TOKEN_IDS = "pixels", "token_ids"  # float32 [B, 3, S, S]; int64 [B, 77]
IMAGE_FEATURES, QUERY_FEATURES, TEXT_FEATURES = "image_features", "query_features", "text_features"
GRAPH_INPUTS = {IMAGE_ENCODER: (PIXELS,), QUERY_ENCODER: (IMAGE_FEATURES, TOKEN_IDS), TEXT_ENCODER: (TOKEN_IDS,)}
GRAPH_OUTPUTS = {IMAGE_ENCODER: IMAGE_FEATURES, QUERY_ENCODER: QUERY_FEATURES, TEXT_ENCODER: TEXT_FEATURES}
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
RESIZE_MODES = ("shortest", "squash", "longest")
CROP_BY_RESIZE_MODE = {"shortest": "center", "squash": "none", "longest": "center_or_pad"}
PREPROCESS_KEYS = ("image_size", "mean", "std", "interpolation", "resize_mode", "fill_color")


class PreprocessConfigError(ZscirError, ValueError):
    """A preprocessing config (from a manifest) is invalid; the message names the field."""


@dataclass(frozen=True)
class PreprocessConfig:
    """open_clip's eval transform as data; the bundle manifest stores `to_dict()`."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

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

    @property
    def crop(self) -> str:
        return CROP_BY_RESIZE_MODE[self.resize_mode]

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "crop": self.crop}

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
