"""Where the time of a composed query goes: one adapter per backend, the same stages for each.

Stages (each timed on its own, inputs prepared outside the timed call):
  decode_preprocess  JPEG files -> pixels [B, 3, S, S] (decode, bicubic resize, crop, normalize)
  tokenize           prompts -> token ids [B, 77] (for phi: the template filled with the text)
  image_encode       pixels -> image features [B, D]
  query_encode       (image features, token ids) -> query features [B, D] (phi + text transformer; for a
                     slerp bundle the text encoder + slerp)
  text_encode        token ids -> text features [B, D]
  search             query features -> top-10 over a gallery (exact)
  end_to_end         (image file, text) -> top-10: everything above in one call, as a user runs it

`TorchStages` is the reference the papers' code amounts to: open_clip's transform and tokenizer, the
PyTorch modules in eager mode, and a torch matmul + topk over the gallery features. `RuntimeStages` is
zscir's deployment path: `zscir_infer.Runtime` (ONNX Runtime or TensorRT) and a FAISS flat index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zscir_bench.timing import LatencyStats, Policy, measure
from zscir_infer.errors import InputError

STAGES = ("decode_preprocess", "tokenize", "image_encode", "query_encode", "text_encode", "search", "end_to_end")
K = 10


@dataclass(frozen=True)
class BackendSpec:
    name: str  # torch | ort-fp32 | ort-cuda-fp16 | ort-tensorrt-fp16 | trt-fp16 ...
    backend: str  # torch | ort | openvino | trt
    device: str = "cpu"  # cpu | cuda | tensorrt (ONNX Runtime's TensorRT provider)
    precision: str = "fp32"


TORCH_TRIMMED = "torch-trimmed"  # the PyTorch reference fed ids cut after the batch's last EOT, as the runtime


def parse_backend(name: str) -> BackendSpec:
    """'torch', 'torch-trimmed', 'ort-fp32', 'ort-int8', 'ort-cuda-fp16', 'ort-tensorrt-fp16', 'openvino-fp32'
    or 'trt-fp16'."""
    parts = name.strip().lower().split("-")
    if parts == ["torch"]:
        return BackendSpec("torch", "torch")
    if parts == ["torch", "trimmed"]:
        return BackendSpec(TORCH_TRIMMED, "torch")
    if parts[0] == "ort" and len(parts) == 2:
        return BackendSpec(name, "ort", "cpu", parts[1])
    if parts[0] == "ort" and len(parts) == 3 and parts[1] in ("cuda", "tensorrt"):
        return BackendSpec(name, "ort", parts[1], parts[2])
    if parts[0] == "trt" and len(parts) == 2:
        return BackendSpec(name, "trt", "cuda", parts[1])
    if parts[0] == "openvino" and len(parts) == 2:
        return BackendSpec(name, "openvino", "cpu", parts[1])
    raise InputError(
        f"Unknown backend {name!r}: use torch, torch-trimmed, ort-PRECISION (CPU), ort-cuda-PRECISION, ort-tensorrt-PRECISION, "
        "openvino-PRECISION (CPU) or trt-PRECISION, with PRECISION fp32, fp16 or int8 (as the bundle has them)."
    )


class RuntimeStages:
    """zscir's runtime on a bundle: ONNX Runtime (CPU, CUDA, TensorRT provider) or TensorRT engines."""

    def __init__(self, bundle: Path, spec: BackendSpec, xb: np.ndarray, threads: int, max_batch: int):
        from zscir_infer import search
        from zscir_infer.runtime import Runtime

        self.spec = spec
        self.rt = Runtime(bundle, spec.backend, spec.device, spec.precision, batch_size=max_batch, threads=threads)
        self.method = self.rt.default_method
        self.index = search.build_index(xb, "flat", gpu=False)

    @property
    def providers(self) -> dict[str, list[str]]:
        return self.rt.providers_used()

    def prompts(self, texts: Sequence[str]) -> list[str]:
        from zscir_infer.contract import PHI, fill_template

        if self.method != PHI:
            return list(texts)
        return [fill_template(self.rt.template(), t, self.rt.placeholder) for t in texts]

    def decode_preprocess(self, paths: Sequence[Path]) -> np.ndarray:
        return self.rt.preprocess(paths)

    def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
        return self.rt.token_ids(prompts)

    def image_encode(self, pixels: np.ndarray) -> np.ndarray:
        return self.rt.image_features(pixels)

    def text_encode(self, ids: np.ndarray) -> np.ndarray:
        from zscir_infer.contract import TEXT_ENCODER, TOKEN_IDS

        return self.rt.run_graph(TEXT_ENCODER, {TOKEN_IDS: ids})

    def query_encode(self, features: np.ndarray, ids: np.ndarray) -> np.ndarray:
        from zscir_infer.contract import IMAGE_FEATURES, PHI, QUERY_ENCODER, TOKEN_IDS
        from zscir_infer.runtime import slerp

        if self.method == PHI:
            return self.rt.run_graph(QUERY_ENCODER, {IMAGE_FEATURES: features, TOKEN_IDS: ids})
        return slerp(features, self.text_encode(ids), self.rt.bundle.slerp_alpha)

    def search(self, xq: np.ndarray) -> np.ndarray:
        """What a gallery's store runs for a batch: one search call, then the (empty) exclusions dropped."""
        from zscir_infer import search

        banned = search.excluded_matrix(None, xq.shape[0])
        return search.drop_excluded(*search.search(self.index, xq, K), banned, K)[1]

    def end_to_end(self, pairs: Sequence[tuple[Path, str]]) -> np.ndarray:
        return self.search(self.rt.encode_queries(pairs, method=self.method))


class TorchStages:
    """The PyTorch reference (open_clip + ComposedQueryEncoder), eager, with a torch matmul top-k.

    trim: feed the text transformer ids cut after the batch's last end-of-text token (rounded up to a
    multiple of 8, `zscir_infer.contract.trimmed_sequence_length`) as the runtime does, instead of all 77
    positions as the papers' code does; the same features for a causal tower, so the two references
    separate what the trimming saves from what the engine saves."""

    def __init__(self, reference, xb: np.ndarray, threads: int, trim: bool = False):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.ref = reference
        self.model = reference.backbone.model
        self.method = "phi" if reference.query_encoder is not None else "slerp"
        self.gallery = torch.from_numpy(xb)  # [G, D]
        self.trim = trim
        self.spec = parse_backend(TORCH_TRIMMED if trim else "torch")
        self.providers = {"all": [f"torch {torch.__version__} eager, {torch.get_num_threads()} threads"
                                  + (", ids trimmed after the last EOT" if trim else "")]}

    def prompts(self, texts: Sequence[str]) -> list[str]:
        from zscir_infer.contract import fill_template

        if self.method != "phi":
            return list(texts)
        return [fill_template(self.ref.template, t, self.ref.placeholder) for t in texts]

    def decode_preprocess(self, paths: Sequence[Path]):
        from PIL import Image

        pixels = []
        for path in paths:
            with Image.open(path) as im:
                pixels.append(self.ref.backbone.transform(im))
        return self.torch.stack(pixels)  # [B, 3, S, S]

    def tokenize(self, prompts: Sequence[str]):
        ids = self.ref.backbone.tokenizer(list(prompts))
        if not self.trim:
            return ids
        from zscir_infer.contract import trimmed_ids

        return trimmed_ids(ids).contiguous()

    def image_encode(self, pixels):
        with self.torch.inference_mode():
            return self.model.encode_image(pixels)

    def text_encode(self, ids):
        from zscir_train.composed import encode_text_with_pseudo

        with self.torch.inference_mode():
            if self.trim:  # open_clip's encode_text adds all 77 positional embeddings: slice them to L
                return encode_text_with_pseudo(self.model, ids)
            return self.model.encode_text(ids)

    def query_encode(self, features, ids):
        from zscir_train.composed import slerp

        with self.torch.inference_mode():
            if self.method == "phi":
                return self.ref.query_encoder(features, ids)
            return slerp(features, self.model.encode_text(ids), self.ref.alpha)

    def search(self, xq):
        xq = xq if isinstance(xq, self.torch.Tensor) else self.torch.from_numpy(xq)
        with self.torch.inference_mode():
            return self.torch.topk(xq @ self.gallery.T, K, dim=1).indices

    def end_to_end(self, pairs: Sequence[tuple[Path, str]]):
        if not self.trim:
            return self.search(self.ref.encode_queries(pairs, method=self.method))
        paths, texts = zip(*pairs, strict=True)
        features = self.image_encode(self.decode_preprocess(paths))
        return self.search(self.query_encode(features, self.tokenize(self.prompts(texts))))

    def prompt_tokens(self, prompts: Sequence[str]) -> list[int]:
        """Tokens of each prompt up to and including end-of-text (what trimming keeps at most)."""
        return [int(i) + 1 for i in self.ref.backbone.tokenizer(list(prompts)).argmax(dim=1)]


def stage_calls(stages, paths: Sequence[Path], texts: Sequence[str]) -> dict[str, Callable[[], object]]:
    """Zero-argument calls per stage for one batch, each with its inputs computed beforehand."""
    prompts = stages.prompts(texts)
    pixels = stages.decode_preprocess(paths)
    ids = stages.tokenize(prompts)
    features = stages.image_encode(pixels)
    xq = stages.query_encode(features, ids)
    pairs = list(zip(paths, texts, strict=True))
    return {
        "decode_preprocess": lambda: stages.decode_preprocess(paths),
        "tokenize": lambda: stages.tokenize(prompts),
        "image_encode": lambda: stages.image_encode(pixels),
        "query_encode": lambda: stages.query_encode(features, ids),
        "text_encode": lambda: stages.text_encode(ids),
        "search": lambda: stages.search(xq),
        "end_to_end": lambda: stages.end_to_end(pairs),
    }


def run_stages(stages, paths: Sequence[Path], texts: Sequence[str], batches: Sequence[int], policy: Policy,
               only: Sequence[str] = STAGES, progress: Callable[[str], None] | None = None
               ) -> dict[str, dict[int, LatencyStats]]:
    """{stage: {batch: stats}} for every stage in `only` and every batch size."""
    results: dict[str, dict[int, LatencyStats]] = {s: {} for s in only}
    for batch in batches:
        calls = stage_calls(stages, paths[:batch], texts[:batch])
        for stage in only:
            if progress:
                progress(f"{stages.spec.name}: {stage} at batch {batch}")
            results[stage][batch] = measure(calls[stage], batch, policy)
    return results
