"""`TorchReference`: the PyTorch ground truth with the runtime's interface.

`encode_images`, `encode_texts` and `encode_queries` take and return what `zscir_infer.Runtime` does
(PIL images or paths in; float32 numpy, L2-normalized, out), so benchmarks and the evaluation harness can
run either one and compare them on the same inputs.

Images are loaded as the runtime loads them (`zscir_infer.preprocess.load_image`: EXIF orientation
applied, every mode converted to RGB before the transform) and then go through the backbone's transform (open_clip's, with SEARLE's target pad in front when chosen).
Loading is zscir's documented decision, not open_clip's: an RGBA picture converted after the resize (as a
bare `Image.open` + open_clip would do) is resized with premultiplied alpha and differs at alpha edges.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zscir_infer.contract import AVERAGE, DEFAULT_SLERP_ALPHA, IMAGE, METHODS, PHI, SUM, TEXT, fill_template
from zscir_infer.errors import UsageError
from zscir_infer.preprocess import load_image
from zscir_train.backbone import Backbone
from zscir_train.checkpoint import PhiMeta
from zscir_train.composed import ComposedQueryEncoder, average, placeholder_token_id, slerp, sum_query

DEFAULT_BATCH_SIZE = 32


class TorchReference:
    """Composed-query encoding with open_clip and the reference ComposedQueryEncoder (no export involved).

    device: where the encoders run (the backbone and phi are moved there); default: where the backbone's
    weights already are. Inputs go there in batches of `batch_size`; features come back as CPU float32.
    """

    def __init__(self, backbone: Backbone, phi: torch.nn.Module | None = None, meta: PhiMeta | None = None,
                 alpha: float = DEFAULT_SLERP_ALPHA, batch_size: int = DEFAULT_BATCH_SIZE,
                 device: str | torch.device | None = None):
        self.backbone = backbone
        self.meta = meta
        self.alpha = alpha
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(backbone.model.parameters()).device
        self.placeholder = meta.placeholder if meta else None
        self.template = meta.template if meta else None
        self.query_encoder = None
        backbone.model.to(self.device)
        if phi is not None:
            if meta is None:
                raise ValueError("A phi needs its PhiMeta (placeholder and template).")
            pid = placeholder_token_id(backbone.tokenizer, meta.placeholder)
            self.query_encoder = ComposedQueryEncoder(backbone.model, phi.to(self.device).eval(), pid,
                                                      meta.policy, meta.l2_normalize).eval()

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    def _batches(self, items: Sequence):
        for start in range(0, len(items), self.batch_size):
            yield items[start:start + self.batch_size]

    def _pixels(self, images: Sequence) -> torch.Tensor:
        """[B, 3, H, W] on the device: the runtime's loader, then open_clip's eval transform."""
        return torch.stack([self.backbone.transform(load_image(im)) for im in images]).to(self.device)

    def _tokens(self, texts: Sequence[str]) -> torch.Tensor:
        return self.backbone.tokenizer(list(texts)).to(self.device)  # [B, L]

    def _cat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts) if parts else torch.empty(0, self.embed_dim)

    @torch.no_grad()
    def image_features(self, images: Sequence) -> torch.Tensor:
        """Unnormalized projected image features [N, D] (what phi consumes), CPU float32."""
        encode = self.backbone.model.encode_image
        return self._cat([encode(self._pixels(chunk)).float().cpu() for chunk in self._batches(list(images))])

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Unnormalized projected text features [N, D], CPU float32."""
        encode = self.backbone.model.encode_text
        return self._cat([encode(self._tokens(chunk)).float().cpu() for chunk in self._batches(list(texts))])

    def encode_images(self, images: Sequence) -> np.ndarray:
        return F.normalize(self.image_features(images), dim=-1).numpy().astype(np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return F.normalize(self.text_features(texts), dim=-1).numpy().astype(np.float32)

    @torch.no_grad()
    def encode_queries(self, queries: Sequence[tuple], method: str = PHI, template: str | None = None,
                       alpha: float | None = None) -> np.ndarray:
        """Normalized query features [Q, D] for (reference image, modification text) pairs."""
        if method not in METHODS:
            raise UsageError(f"Unknown method '{method}': use one of {METHODS}.")
        images = [q[0] for q in queries]
        texts = [q[1] for q in queries]
        if method == PHI:
            return self._encode_phi(images, texts, template or self.template).numpy().astype(np.float32)
        v_img = self.image_features(images)
        v_txt = self.text_features(texts)
        if method == IMAGE:
            out = F.normalize(v_img, dim=-1)
        elif method == TEXT:
            out = F.normalize(v_txt, dim=-1)
        elif method == AVERAGE:
            out = average(v_img, v_txt)
        elif method == SUM:
            out = sum_query(v_img, v_txt)
        else:
            out = slerp(v_img, v_txt, self.alpha if alpha is None else alpha)
        return out.numpy().astype(np.float32)

    def _encode_phi(self, images: Sequence, texts: Sequence[str], template: str) -> torch.Tensor:
        """Per batch on the device: image features -> phi -> the prompt's text path; [Q, D] CPU float32."""
        if self.query_encoder is None:
            raise UsageError("Method 'phi' needs a phi checkpoint; this reference was built without one.")
        prompts = [fill_template(template, t, self.placeholder) for t in texts]
        encode_image = self.backbone.model.encode_image
        out = []
        for start in range(0, len(prompts), self.batch_size):
            v_img = encode_image(self._pixels(images[start:start + self.batch_size]))  # [B, D]
            ids = self._tokens(prompts[start:start + self.batch_size])
            out.append(self.query_encoder(v_img, ids).float().cpu())
        return self._cat(out)
