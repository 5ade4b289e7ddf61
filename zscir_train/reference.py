"""`TorchReference`: the PyTorch ground truth with the runtime's interface.

`encode_images`, `encode_texts` and `encode_queries` take and return what `zscir_infer.Runtime` does
(PIL images or paths in; float32 numpy, L2-normalized, out), so benchmarks and the evaluation harness can
run either one and compare them on the same inputs.

Images are loaded as the runtime loads them (`zscir_infer.preprocess.load_image`: EXIF orientation
applied, every mode converted to RGB before the transform) and then go through open_clip's own transform.
Loading is zscir's documented decision, not open_clip's: an RGBA picture converted after the resize (as a
bare `Image.open` + open_clip would do) is resized with premultiplied alpha and differs at alpha edges.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zscir_infer.preprocess import load_image
from zscir_train.backbone import Backbone
from zscir_train.checkpoint import PhiMeta
from zscir_train.composed import (
    DEFAULT_SLERP_ALPHA,
    ComposedQueryEncoder,
    average,
    fill_template,
    placeholder_token_id,
    slerp,
)

METHODS = ("phi", "slerp", "image", "text", "average")
DEFAULT_BATCH_SIZE = 32


class TorchReference:
    """Composed-query encoding with open_clip and the reference ComposedQueryEncoder (no export involved)."""

    def __init__(self, backbone: Backbone, phi: torch.nn.Module | None = None, meta: PhiMeta | None = None,
                 alpha: float = DEFAULT_SLERP_ALPHA, batch_size: int = DEFAULT_BATCH_SIZE):
        self.backbone = backbone
        self.meta = meta
        self.alpha = alpha
        self.batch_size = batch_size
        self.placeholder = meta.placeholder if meta else None
        self.template = meta.template if meta else None
        self.query_encoder = None
        if phi is not None:
            if meta is None:
                raise ValueError("A phi needs its PhiMeta (placeholder and template).")
            pid = placeholder_token_id(backbone.tokenizer, meta.placeholder)
            self.query_encoder = ComposedQueryEncoder(backbone.model, phi.eval(), pid).eval()

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    def _batches(self, items: Sequence):
        for start in range(0, len(items), self.batch_size):
            yield items[start:start + self.batch_size]

    @torch.no_grad()
    def image_features(self, images: Sequence) -> torch.Tensor:
        """Unnormalized projected image features [N, D] (what phi consumes)."""
        out = []
        for chunk in self._batches(list(images)):
            pixels = torch.stack([self.backbone.transform(load_image(im)) for im in chunk])  # [B, 3, H, W]
            out.append(self.backbone.model.encode_image(pixels))
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        out = [self.backbone.model.encode_text(self.backbone.tokenizer(list(c))) for c in self._batches(list(texts))]
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    def encode_images(self, images: Sequence) -> np.ndarray:
        return F.normalize(self.image_features(images), dim=-1).numpy().astype(np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return F.normalize(self.text_features(texts), dim=-1).numpy().astype(np.float32)

    @torch.no_grad()
    def encode_queries(self, queries: Sequence[tuple], method: str = "phi", template: str | None = None,
                       alpha: float | None = None) -> np.ndarray:
        """Normalized query features [Q, D] for (reference image, modification text) pairs."""
        if method not in METHODS:
            raise ValueError(f"Unknown method '{method}': use one of {METHODS}.")
        images = [q[0] for q in queries]
        texts = [q[1] for q in queries]
        if method == "phi":
            return self._encode_phi(images, texts, template or self.template).numpy().astype(np.float32)
        v_img = self.image_features(images)
        v_txt = self.text_features(texts)
        if method == "image":
            out = F.normalize(v_img, dim=-1)
        elif method == "text":
            out = F.normalize(v_txt, dim=-1)
        elif method == "average":
            out = average(v_img, v_txt)
        else:
            out = slerp(v_img, v_txt, self.alpha if alpha is None else alpha)
        return out.numpy().astype(np.float32)

    def _encode_phi(self, images: Sequence, texts: Sequence[str], template: str) -> torch.Tensor:
        if self.query_encoder is None:
            raise ValueError("Method 'phi' needs a phi checkpoint; this reference was built without one.")
        prompts = [fill_template(template, t, self.placeholder) for t in texts]
        v_img = self.image_features(images)
        out = []
        for start in range(0, len(prompts), self.batch_size):
            ids = self.backbone.tokenizer(prompts[start:start + self.batch_size])
            out.append(self.query_encoder(v_img[start:start + self.batch_size], ids))
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)
