"""One spec per graph: names, dtypes, shapes, the PyTorch module and its export; validation reads the same spec.

The three graphs of a bundle (DESIGN §3):
- image_encoder: pixels float32 [batch, 3, S, S] -> image_features float32 [batch, D] (unnormalized);
- query_encoder: image_features float32 [batch, D], token_ids int32 [batch, sequence] -> query_features
  float32 [batch, D] (normalized), phi and the placeholder substitution inside (the reference
  `ComposedQueryEncoder`, with its placeholder policy "all" or "first" and LinCIR's optional
  L2 normalization of the image features before phi);
- text_encoder: token_ids int32 [batch, sequence] -> text_features float32 [batch, D] (unnormalized).

Sequence-adaptive text graphs: when the text tower is causal (open_clip's CLIP transformer with its causal
attn_mask) and pools at the EOT token, the ids' second axis is dynamic ("sequence", any L <= the context
length): the positional embedding and the causal mask are sliced to L inside the graph, and the runtime
feeds the ids cut after the batch's last EOT (`zscir_infer.contract.trimmed_sequence_length`). A tower
without a causal mask keeps the fixed context length (every position matters there).

Token ids are int32 throughout the graph (TensorRT's native integer type): the embedding Gather takes
int32 indices and the end-of-text position is an ArgMax over int32 ids, which TensorRT 10+ supports.
Never a float cast of the ids: 49407 is not exact in fp16, and an fp16 graph would pool the wrong token.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from zscir_infer.contract import (
    BATCH_AXIS,
    IMAGE_ENCODER,
    IMAGE_FEATURES,
    PIXELS,
    PLACEHOLDER_ALL,
    QUERY_ENCODER,
    QUERY_FEATURES,
    SEQUENCE_AXIS,
    TEXT_ENCODER,
    TEXT_FEATURES,
    TOKEN_IDS,
)
from zscir_train.composed import ComposedQueryEncoder, encode_text_with_pseudo, is_causal_text_tower

BATCH, SEQUENCE = BATCH_AXIS, SEQUENCE_AXIS  # the symbolic dims of the manifest's shapes
OPSET = 17  # LayerNormalization is a single op from 17 on; TensorRT 10 parses 9..20
EXPORT_BATCH = 2  # the traced example batch; not 1, which a tracer may specialize shapes on
PROTOBUF_LIMIT = 2**31  # a single .onnx file cannot exceed 2 GiB: larger graphs keep weights beside it
EXTERNAL_DATA_MARGIN = 64 << 20  # graph structure and constants beside the initializers
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32" | "int32"
    shape: tuple  # ints, BATCH for the dynamic batch axis, SEQUENCE for a dynamic token axis

    def concrete(self, batch: int, sequence: int | None = None) -> tuple[int, ...]:
        if SEQUENCE in self.shape and sequence is None:
            raise ValueError(f"{self.name} {list(self.shape)} has a dynamic sequence axis: give its length.")
        return tuple(batch if d == BATCH else sequence if d == SEQUENCE else d for d in self.shape)

    def to_manifest(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


class ImageEncoderGraph(nn.Module):
    """pixels [B, 3, S, S] -> unnormalized image features [B, D] (what phi consumes)."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip = clip_model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixels)


class TextEncoderGraph(nn.Module):
    """token ids [B, L] int32 -> unnormalized text features [B, D] (the reference text path, no pseudo-token)."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip = clip_model

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return encode_text_with_pseudo(self.clip, token_ids)


@dataclass
class GraphSpec:
    """What one graph is: its module, inputs and outputs. Export and validation both follow it."""

    name: str
    module: nn.Module = field(repr=False)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    normalized_output: bool
    opset: int = OPSET

    def file_name(self, precision: str) -> str:
        return f"{self.name}.onnx" if precision == "fp32" else f"{self.name}.{precision}.onnx"

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                for t in (*self.inputs, *self.outputs)}

    @property
    def sequence_adaptive(self) -> bool:
        """Whether an input takes ids of any length up to the context (the dynamic SEQUENCE axis)."""
        return any(SEQUENCE in t.shape for t in self.inputs)

    def manifest_io(self) -> dict:
        return {"inputs": [t.to_manifest() for t in self.inputs], "outputs": [t.to_manifest() for t in self.outputs]}

    @torch.no_grad()
    def run_torch(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The PyTorch reference outputs for the graph's inputs (numpy in, float32 numpy out)."""
        args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.inputs]
        out = self.module.eval()(*args)
        return {self.outputs[0].name: out.float().numpy()}

    def export(self, example: dict[str, np.ndarray], path: Path) -> None:
        """torch.onnx.export (TorchScript exporter, named explicitly: dynamo=False) to `path`.

        Graphs above 2 GiB keep their weights in one `<file>.data` beside the graph.
        """
        scratch = path.parent / f".{path.name}.export"
        scratch.mkdir(parents=True, exist_ok=True)
        traced = scratch / path.name
        args = tuple(torch.from_numpy(np.ascontiguousarray(example[t.name])) for t in self.inputs)
        clip = getattr(self.module, "clip", None) if self.sequence_adaptive else None
        try:
            with torch.no_grad(), _mha_fastpath_disabled(), _quiet_exporter(), _traceable_text_attention(clip):
                torch.onnx.export(
                    self.module.eval(), args, str(traced), dynamo=False, opset_version=self.opset,
                    input_names=[t.name for t in self.inputs], output_names=[t.name for t in self.outputs],
                    dynamic_axes=self.dynamic_axes(),
                )
            single = len(list(scratch.iterdir())) == 1
            if single and traced.stat().st_size + EXTERNAL_DATA_MARGIN < PROTOBUF_LIMIT:
                model = onnx.load(str(traced))
                if self._declare_io_dims(model):
                    onnx.save_model(model, str(traced))
                traced.replace(path)
            else:  # above 2 GiB the exporter writes one file per tensor: gather the weights in one file
                model = onnx.load(str(traced))
                self._declare_io_dims(model)
                save_onnx(model, path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _declare_io_dims(self, model: onnx.ModelProto) -> bool:
        """Give the inputs/outputs the spec's dims where the tracer left a symbol (F.normalize's D); changed?"""
        declared = {t.name: t.shape for t in (*self.inputs, *self.outputs)}
        changed = False
        for value in (*model.graph.input, *model.graph.output):
            for dim, want in zip(value.type.tensor_type.shape.dim, declared[value.name], strict=True):
                if (dim.dim_param or dim.dim_value) != want:
                    changed = True
                    if isinstance(want, str):
                        dim.dim_param = want
                    else:
                        dim.dim_value = want
        return changed


def graph_specs(backbone, phi: nn.Module | None = None, placeholder_id: int | None = None,
                placeholder_policy: str = PLACEHOLDER_ALL, l2_normalize: bool = False) -> list[GraphSpec]:
    """The bundle's graphs for a backbone, and the query encoder when there is a phi."""
    model, d, size, length = backbone.model.eval(), backbone.embed_dim, backbone.preprocess.image_size, \
        backbone.context_length
    pixels = TensorSpec(PIXELS, "float32", (BATCH, 3, size, size))
    causal = is_causal_text_tower(model)  # EOT pooling of a causal tower: ids may be cut after EOT
    token_ids = TensorSpec(TOKEN_IDS, "int32", (BATCH, SEQUENCE if causal else length))
    image_features = TensorSpec(IMAGE_FEATURES, "float32", (BATCH, d))
    specs = [GraphSpec(IMAGE_ENCODER, ImageEncoderGraph(model), (pixels,), (image_features,), False)]
    if phi is not None:
        if placeholder_id is None:
            raise ValueError("The query encoder needs the placeholder's token id.")
        query = ComposedQueryEncoder(model, phi.eval(), placeholder_id, placeholder_policy, l2_normalize).eval()
        specs.append(GraphSpec(QUERY_ENCODER, query, (image_features, token_ids),
                               (TensorSpec(QUERY_FEATURES, "float32", (BATCH, d)),), True))
    specs.append(GraphSpec(TEXT_ENCODER, TextEncoderGraph(model), (token_ids,),
                           (TensorSpec(TEXT_FEATURES, "float32", (BATCH, d)),), False))
    return specs


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Save a graph as one file, or with its weights in one `<name>.data` file above the protobuf limit."""
    path.unlink(missing_ok=True)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    if initializer_bytes(model) + EXTERNAL_DATA_MARGIN < PROTOBUF_LIMIT:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)


def graph_files(path: Path) -> list[Path]:
    """The graph file and, if it has one, its external-data file."""
    data = path.with_name(path.name + ".data")
    return [path, data] if data.exists() else [path]


@contextlib.contextmanager
def _mha_fastpath_disabled() -> Iterator[None]:
    """nn.MultiheadAttention's inference fast path is one fused op the ONNX exporter cannot translate."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The TorchScript exporter warns about itself and about traced shape arithmetic; both are expected."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        yield


@contextlib.contextmanager
def _traceable_text_attention(clip_model: nn.Module | None) -> Iterator[None]:
    """Trace the text tower's self-attention with the sequence length left dynamic.

    nn.MultiheadAttention's functional form reshapes the keys with `k.shape[0]`, which the TorchScript
    tracer records as a constant (the traced length): the graph then fails on any other length. For the
    export only, each text block's `attention` is the same computation written with `-1` for the length
    (in-projection, scaled dot product with the additive mask, softmax, out-projection); the validation
    holds the graph to the unchanged PyTorch module at full and at trimmed lengths.
    """
    blocks = [] if clip_model is None else list(getattr(getattr(clip_model, "transformer", None), "resblocks", []))
    patched = [b for b in blocks if isinstance(getattr(b, "attn", None), nn.MultiheadAttention)
               and b.attn._qkv_same_embed_dim and b.attn.in_proj_bias is not None and b.attn.bias_k is None]
    batch_first = bool(getattr(clip_model.transformer, "batch_first", True)) if patched else True
    for block in patched:
        block.attention = _explicit_attention(block.attn, batch_first)
    try:
        yield
    finally:
        for block in patched:
            del block.attention  # the class's method again


def _explicit_attention(attn: nn.MultiheadAttention, batch_first: bool):
    heads = attn.num_heads
    width = attn.embed_dim
    head_dim = width // heads
    scale = float(head_dim) ** -0.5

    def attention(q_x: torch.Tensor, k_x=None, v_x=None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = q_x if batch_first else q_x.transpose(0, 1)  # [B, L, W]
        q, k, v = torch.nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(x.shape[0], -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))  # [B, h, L, d]
        scores = torch.matmul(q * scale, k.transpose(-2, -1))  # [B, h, L, L]
        if attn_mask is not None:
            scores = scores + attn_mask.to(scores.dtype)
        out = torch.matmul(scores.softmax(dim=-1), v).transpose(1, 2).reshape(x.shape[0], -1, width)
        out = torch.nn.functional.linear(out, attn.out_proj.weight, attn.out_proj.bias)
        return out if batch_first else out.transpose(0, 1)

    return attention
