"""Validation: every exported graph against its PyTorch module on the same inputs, in ONNX Runtime.

Per output: the largest absolute difference and the smallest row cosine against the PyTorch fp32
outputs, over the full validation batch and a batch of one (the dynamic batch axis is exercised).
Thresholds (issue 5): fp32 cosine >= 0.99999 and max abs <= 1e-4; fp16 cosine >= 0.999; int8 (dynamic
quantization) cosine >= 0.99. All failures are collected and reported in one error; the achieved
figures go into the manifest.

The inputs are chosen to reach the pitfalls: real-looking images and random pixels; prompts of many
lengths (empty, over-long and truncated), the placeholder once and several times, unicode, emoji, HTML
entities, odd whitespace, and a literal end-of-text token (two EOT ids: pooling must take the first).
A graph that lost its causal mask, its int32 end-of-text pooling or its placeholder substitution
fails here.

The activation check reads the exported encoders themselves: QuickGELU exports as Sigmoid(1.702 x) * x,
exact GELU as Erf. An image or text encoder that computes another activation than the backbone records
(the manifest's `backbone.activation`) is a failure too, so a bundle never claims QuickGELU for a
GELU graph (or the reverse).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch

from zscir_export.fp16 import ORT_DISABLED_OPTIMIZERS
from zscir_export.graphs import GraphSpec
from zscir_infer.contract import (
    GELU,
    IMAGE_ENCODER,
    IMAGE_FEATURES,
    PIXELS,
    QUERY_ENCODER,
    QUICK_GELU,
    TEXT_ENCODER,
    TOKEN_IDS,
    fill_template,
    trimmed_ids,
)
from zscir_infer.errors import ZscirError

RANDOM_PIXEL_ROWS = 2
VALIDATION_SEED = 0
LONG_CAPTION = " ".join(["a remarkably long caption that keeps going"] * 12)  # > 77 tokens: truncated
TEXT_PROMPTS = (
    "",
    "a",
    "a photo of a red circle on a blue background",
    "$",
    "a photo of $ that is made of origami",
    "$ and $ and $ , three of them",
    LONG_CAPTION,
    "café naïve — emoji 🎉🐱 &amp; &lt;b&gt;bold&lt;/b&gt; “quotes” 東京",
    "  odd\twhitespace\n\nand   gaps  ",
    "first part <end_of_text> after a literal end token",
    "UPPER lower MiXeD 12345 !!! ??? * $$",
)
QUERY_CAPTIONS = (
    "is red",
    "as an origami sketch",
    "with two of them, much larger, on a striped background",
    "🎉 café &amp; <b>neon</b>  lights",
    "costs $5 more, * marks it",  # the placeholder characters inside a caption: the policies differ here
    LONG_CAPTION,
    "",
)


@dataclass(frozen=True)
class Tolerance:
    min_cosine: float
    max_abs: float | None  # None: reported, not required


TOLERANCES = {"fp32": Tolerance(0.99999, 1e-4), "fp16": Tolerance(0.999, None), "int8": Tolerance(0.99, None)}


@dataclass(frozen=True)
class OutputCheck:
    """One output of one graph at one precision, against the PyTorch fp32 reference."""

    graph: str
    precision: str
    output: str
    max_abs: float
    min_cosine: float
    tolerance: Tolerance
    batch_sizes: tuple[int, ...]

    @property
    def passed(self) -> bool:
        ok_cos = self.min_cosine >= self.tolerance.min_cosine
        return ok_cos and (self.tolerance.max_abs is None or self.max_abs <= self.tolerance.max_abs)

    def describe(self) -> str:
        need = f"cosine >= {self.tolerance.min_cosine}"
        if self.tolerance.max_abs is not None:
            need += f" and max abs <= {self.tolerance.max_abs:g}"
        return (f"{self.graph} {self.precision} {self.output}: max abs {self.max_abs:.3g}, min cosine "
                f"{self.min_cosine:.7f} (needs {need})")

    def to_manifest(self) -> dict:
        return {
            "max_abs": self.max_abs,
            "min_cosine": self.min_cosine,
            "threshold_min_cosine": self.tolerance.min_cosine,
            "threshold_max_abs": self.tolerance.max_abs,
            "batch_sizes": list(self.batch_sizes),
            "reference": "PyTorch fp32",
        }


class ValidationError(ZscirError, RuntimeError):
    """Exported graphs differ from PyTorch beyond the thresholds; lists every failing output."""

    def __init__(self, failures: list[OutputCheck]):
        self.failures = failures
        lines = "\n".join(f"  {f.describe()}" for f in failures)
        super().__init__(
            f"Validation against PyTorch failed for {len(failures)} output(s); no bundle was written:\n{lines}"
        )


def ort_session(path, precision: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    disabled = list(ORT_DISABLED_OPTIMIZERS) if precision == "fp16" else []
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, (a * b).sum(-1) / np.maximum(na * nb, np.finfo(np.float64).tiny))


def check_graph(spec: GraphSpec, path, precision: str, feeds: dict[str, np.ndarray],
                reference: dict[str, np.ndarray]) -> list[OutputCheck]:
    """Run the graph on the full batch and on its first row; compare each output with the reference.

    A sequence-adaptive graph also runs on the ids cut to the runtime's trimmed length (both batches),
    against the same full-length PyTorch reference."""
    session = ort_session(path, precision)
    batch = len(next(iter(feeds.values())))
    worst = {t.name: (0.0, 1.0) for t in spec.outputs}
    for rows in (slice(0, batch), slice(0, 1)):
        runs = [{n: a[rows] for n, a in feeds.items()}]
        if spec.sequence_adaptive:  # the ids cut after the last EOT, as the runtime feeds them: same outputs
            runs.append({**runs[0], TOKEN_IDS: np.ascontiguousarray(trimmed_ids(runs[0][TOKEN_IDS]))})
        for run in runs:
            outputs = session.run([t.name for t in spec.outputs], run)
            for t, got in zip(spec.outputs, outputs, strict=True):
                want = reference[t.name][rows]
                if got.shape != want.shape or got.dtype != np.dtype(t.dtype):
                    raise ValueError(f"{path.name}: output {t.name} is {got.dtype}{list(got.shape)}, the spec says "
                                     f"{t.dtype}{list(want.shape)}: the exported signature is wrong.")
                max_abs = float(np.nan_to_num(np.abs(got.astype(np.float64) - want), nan=np.inf).max())
                min_cos = float(np.nan_to_num(row_cosines(got, want), nan=-1.0).min())
                worst[t.name] = (max(worst[t.name][0], max_abs), min(worst[t.name][1], min_cos))
    return [OutputCheck(spec.name, precision, name, max_abs, min_cos, TOLERANCES[precision], (batch, 1))
            for name, (max_abs, min_cos) in worst.items()]


ACTIVATION_OPS = {QUICK_GELU: "Sigmoid", GELU: "Erf"}  # how each exports at opset 17


NO_GELU = "none"  # a tower without a GELU-family activation (a ResNet image tower: ReLU), where the choice is moot


def onnx_activation(path) -> str | None:
    """The MLP activation an encoder graph computes: quick_gelu (Sigmoid, no Erf), gelu (Erf, no Sigmoid),
    NO_GELU when it has neither op; None when it has both (ambiguous)."""
    ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    found = [name for name, op in ACTIVATION_OPS.items() if op in ops]
    return found[0] if len(found) == 1 else (NO_GELU if not found else None)


@dataclass(frozen=True)
class ActivationCheck:
    """An encoder graph's activation against the one the backbone (and the manifest) records."""

    graph: str
    expected: str
    found: str | None

    @property
    def passed(self) -> bool:
        return self.found in (self.expected, NO_GELU)

    def describe(self) -> str:
        return (f"{self.graph}: the graph computes {self.found or 'both QuickGELU and GELU'} but the "
                f"backbone is built with {self.expected}")


def check_activation(spec: GraphSpec, path, expected: str | None) -> list[ActivationCheck]:
    """The image and text encoders' activation (the query graph also holds phi's own GELU: not checked)."""
    if expected is None or spec.name not in (IMAGE_ENCODER, TEXT_ENCODER):
        return []
    return [ActivationCheck(spec.name, expected, onnx_activation(path))]


def raise_on_failures(checks: list[OutputCheck | ActivationCheck]) -> None:
    failures = [c for c in checks if not c.passed]
    if failures:
        raise ValidationError(failures)


def validation_pixels(backbone, images) -> np.ndarray:
    """The sample images through the backbone's transform (open_clip's, or with SEARLE's target pad), plus random pixels: [N, 3, S, S] float32."""
    real = torch.stack([backbone.transform(im) for im in images]).numpy()
    size = backbone.preprocess.image_size
    noise = np.random.default_rng(VALIDATION_SEED).standard_normal((RANDOM_PIXEL_ROWS, 3, size, size))
    return np.concatenate([real, noise.astype(np.float32)]).astype(np.float32)


def token_ids(backbone, texts) -> np.ndarray:
    return backbone.tokenizer(list(texts)).numpy().astype(np.int32)


def query_prompts(template: str, placeholder: str) -> list[str]:
    """Template-filled captions, plus prompts with the placeholder repeated and at the very start."""
    prompts = [fill_template(template, c, placeholder) for c in QUERY_CAPTIONS]
    return prompts + [f"{placeholder} {placeholder} two tokens of it", f"{placeholder}", f"{placeholder} {LONG_CAPTION}"]


def validation_feeds(specs: list[GraphSpec], backbone, images, template: str | None,
                     placeholder: str | None) -> dict[str, dict[str, np.ndarray]]:
    """Graph name -> its validation inputs. Query image features come from the PyTorch image encoder."""
    pixels = validation_pixels(backbone, images)
    feeds = {IMAGE_ENCODER: {PIXELS: pixels}, TEXT_ENCODER: {TOKEN_IDS: token_ids(backbone, TEXT_PROMPTS)}}
    by_name = {s.name: s for s in specs}
    if QUERY_ENCODER in by_name:
        ids = token_ids(backbone, query_prompts(template, placeholder))
        features = by_name[IMAGE_ENCODER].run_torch({PIXELS: pixels})[IMAGE_FEATURES]
        rows = np.resize(np.arange(len(features)), len(ids))  # cycle the images over the prompts
        feeds[QUERY_ENCODER] = {IMAGE_FEATURES: features[rows], TOKEN_IDS: ids}
    return {name: feeds[name] for name in by_name}
