"""The PyTorch composed-query encoder: the reference that export and the runtime are checked against.

A composed query = phi(image features) substituted as a pseudo-token into a prompt such as
`a photo of $ that {caption}` (filled by `zscir_infer.contract.fill_template`), then CLIP's text path.
The substitution is a fixed-length `where` at every position whose id is the placeholder's (no
nonzero/cat), so the module exports with static shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zscir_infer.contract import NORM_EPS, SLERP_PARALLEL_COS, TemplateError


def placeholder_token_id(tokenizer, placeholder: str) -> int:
    """The BPE id of the placeholder; it must be a single token ("$" is 259, "*" is 265)."""
    ids = [int(i) for i in tokenizer([placeholder])[0].tolist() if i != 0]
    if len(ids) != 3:  # SOT, the token, EOT
        raise TemplateError(f"Placeholder '{placeholder}' is {len(ids) - 2} BPE tokens; it must be exactly one.")
    return ids[1]


def encode_text_with_pseudo(
    model: nn.Module, ids: torch.Tensor, pseudo: torch.Tensor | None = None, placeholder_id: int | None = None
) -> torch.Tensor:
    """CLIP's text path with `pseudo` [B, W] at every placeholder position; returns unnormalized [B, D]."""
    x = model.token_embedding(ids)  # [B, L, W]
    if pseudo is not None:
        at_placeholder = (ids == placeholder_id).unsqueeze(-1)  # [B, L, 1]
        x = torch.where(at_placeholder, pseudo.unsqueeze(1).to(x.dtype), x)
    x = x + model.positional_embedding.to(x.dtype)
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)  # [B, L, W]
    eot = ids.argmax(dim=-1)  # EOT is the largest id in CLIP's vocabulary
    x = x.gather(1, eot[:, None, None].expand(-1, 1, x.shape[-1])).squeeze(1)  # [B, W]
    proj = model.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj  # [B, D]


class ComposedQueryEncoder(nn.Module):
    """(image features [B, D] unnormalized, token ids [B, L]) -> normalized query features [B, D]."""

    def __init__(self, clip_model: nn.Module, phi: nn.Module, placeholder_id: int):
        super().__init__()
        self.clip = clip_model
        self.phi = phi
        self.placeholder_id = int(placeholder_id)

    def forward(self, image_features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        pseudo = self.phi(image_features)  # [B, W]
        query = encode_text_with_pseudo(self.clip, ids, pseudo, self.placeholder_id)
        return F.normalize(query, dim=-1, eps=NORM_EPS)


def slerp(v_img: torch.Tensor, v_txt: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation from image (alpha=0) to text (alpha=1); inputs normalized first, output unit.

    Near-parallel pairs (|cos| > SLERP_PARALLEL_COS, where sin(theta) -> 0) use normalized linear
    interpolation. The runtime computes the same formula in numpy with the same constants.
    """
    a = F.normalize(v_img, dim=-1, eps=NORM_EPS)
    b = F.normalize(v_txt, dim=-1, eps=NORM_EPS)
    cos = (a * b).sum(-1, keepdim=True).clamp(-1.0, 1.0)  # [B, 1]
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    parallel = cos.abs() > SLERP_PARALLEL_COS
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    w_img = torch.where(parallel, torch.full_like(sin, 1.0 - alpha), torch.sin((1.0 - alpha) * theta) / safe_sin)
    w_txt = torch.where(parallel, torch.full_like(sin, alpha), torch.sin(alpha * theta) / safe_sin)
    return F.normalize(w_img * a + w_txt * b, dim=-1, eps=NORM_EPS)


def average(v_img: torch.Tensor, v_txt: torch.Tensor) -> torch.Tensor:
    """The average baseline: mean of the two normalized features, renormalized."""
    return F.normalize(F.normalize(v_img, dim=-1) + F.normalize(v_txt, dim=-1), dim=-1, eps=NORM_EPS)
