"""CLIP's text path on the shortest prefix that holds every EOT: the training-time fast path.

With CLIP's causal mask, the features at a position depend only on the positions before it, so the
pooled EOT features are the same whether the padding after the last EOT of the batch is computed or
not. Captions are short (CC3M ~12 BPE tokens, Pic2Word's `a photo of *` 6), so skipping the padding of
the 77-token context makes every LinCIR / Pic2Word / TAT step several times cheaper. Same math as
`zscir_train.composed.encode_text_with_pseudo` (a test checks them against each other); the reference
and export keep the full static length.
"""

from __future__ import annotations

import torch
from torch import nn


def encode_text_trimmed(clip: nn.Module, ids: torch.Tensor, pseudo: torch.Tensor | None = None,
                        placeholder_id: int | None = None) -> torch.Tensor:
    """Unnormalized text features [B, D]; `pseudo` [B, W] replaces the token embedding at the placeholder."""
    mask = clip.attn_mask
    length = int(ids.argmax(dim=-1).max()) + 1 if mask is not None else ids.shape[1]  # EOT: the largest id
    ids = ids[:, :length]  # [B, L]
    x = clip.token_embedding(ids)  # [B, L, W]
    if pseudo is not None:
        x = torch.where((ids == placeholder_id).unsqueeze(-1), pseudo.unsqueeze(1).to(x.dtype), x)
    x = x + clip.positional_embedding[:length].to(x.dtype)
    x = clip.transformer(x, attn_mask=mask[:length, :length] if mask is not None else None)
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]  # [B, W]
    proj = clip.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj  # [B, D]
