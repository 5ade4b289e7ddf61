"""The PyTorch composed-query encoder: the reference that export and the runtime are checked against.

A composed query = phi(image features) substituted as a pseudo-token into a prompt such as
`a photo of $ that {caption}` (filled by `zscir_infer.contract.fill_template`), then CLIP's text path.
The substitution is a fixed-length `where` (no nonzero/cat), so the module exports with static shapes,
at the positions the placeholder policy names, as each method's official code substitutes:
- "all" (LinCIR's `torch.where(text == 259, ...)`): every position whose id is the placeholder's;
- "first" (SEARLE's `encode_with_pseudo_tokens`, Pic2Word's `encode_text_img_retrieval`): the first
  one of each row only, found with a cumulative sum over the placeholder mask. Pic2Word's unbatched
  code takes row 0's position for the whole batch; zscir takes each row's own first position, which
  equals Pic2Word's whenever the rows share the template (its evaluation) and, unlike it, does not
  make a query depend on the other queries in its batch.
So a caption that itself holds the placeholder character ("costs $5 more") keeps its own token under
"first" and receives the image token under "all", as in the respective official code.

LinCIR's `--l2_normalize` (off by default, as there) L2-normalizes the image features before phi.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zscir_infer.contract import (
    NORM_EPS,
    PLACEHOLDER_ALL,
    PLACEHOLDER_FIRST,
    PLACEHOLDER_POLICIES,
    SLERP_PARALLEL_COS,
    TemplateError,
)


def placeholder_token_id(tokenizer, placeholder: str) -> int:
    """The BPE id of the placeholder; it must be a single token ("$" is 259, "*" is 265)."""
    ids = [int(i) for i in tokenizer([placeholder])[0].tolist() if i != 0]
    if len(ids) != 3:  # SOT, the token, EOT
        raise TemplateError(f"Placeholder '{placeholder}' is {len(ids) - 2} BPE tokens; it must be exactly one.")
    return ids[1]


def check_placeholder_policy(policy: str) -> str:
    if policy not in PLACEHOLDER_POLICIES:
        raise ValueError(f"Unknown placeholder policy '{policy}': use one of {PLACEHOLDER_POLICIES}.")
    return policy


def placeholder_mask(ids: torch.Tensor, placeholder_id: int, policy: str = PLACEHOLDER_ALL) -> torch.Tensor:
    """[B, L] bool: the positions that receive the pseudo-token under `policy`."""
    at = ids == placeholder_id  # [B, L]
    if check_placeholder_policy(policy) == PLACEHOLDER_FIRST:
        # float cumsum: ONNX CumSum (TensorRT parses it for float types); counts <= 77 are exact in fp16 too
        at = at & (at.to(torch.float32).cumsum(dim=-1) == 1.0)
    return at


def is_causal_text_tower(model: nn.Module) -> bool:
    """Whether the text tower is open_clip's causal CLIP transformer (a causal attn_mask) pooled at EOT.

    Only then may the ids be cut after the last end-of-text token without changing the features; a
    tower without the mask (attn_mask None, e.g. SigLIP-like) sees every position and keeps full length.
    """
    mask = getattr(model, "attn_mask", None)
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    future = torch.triu(torch.ones_like(mask, dtype=torch.bool), diagonal=1)
    return bool(torch.isneginf(mask[future]).all() and (mask[~future] == 0).all())


def encode_text_with_pseudo(
    model: nn.Module, ids: torch.Tensor, pseudo: torch.Tensor | None = None, placeholder_id: int | None = None,
    policy: str = PLACEHOLDER_ALL,
) -> torch.Tensor:
    """CLIP's text path with `pseudo` [B, W] at the placeholder position(s) `policy` names; unnormalized [B, D].

    ids [B, L] with L <= the context length: the positional embedding and the causal mask are cut to L.
    """
    x = model.token_embedding(ids)  # [B, L, W]
    if pseudo is not None:
        at_placeholder = placeholder_mask(ids, placeholder_id, policy).unsqueeze(-1)  # [B, L, 1]
        x = torch.where(at_placeholder, pseudo.unsqueeze(1).to(x.dtype), x)
    # Sliced to the ids' length L <= context: a causal tower's EOT feature depends only on the tokens
    # before it, so ids cut after the last EOT give the same features (the graph's dynamic sequence axis).
    seq = ids.shape[1]
    x = x + model.positional_embedding[:seq].to(x.dtype)
    mask = model.attn_mask
    x = model.transformer(x, attn_mask=None if mask is None else mask[:seq, :seq])
    x = model.ln_final(x)  # [B, L, W]
    eot = ids.argmax(dim=-1)  # EOT is the largest id in CLIP's vocabulary
    x = x.gather(1, eot[:, None, None].expand(-1, 1, x.shape[-1])).squeeze(1)  # [B, W]
    proj = model.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj  # [B, D]


class ComposedQueryEncoder(nn.Module):
    """(image features [B, D] unnormalized, token ids [B, L]) -> normalized query features [B, D].

    placeholder_policy: "all" or "first" (module docstring); l2_normalize: normalize the image features
    before phi (LinCIR's --l2_normalize). Both are fixed at construction and exported inside the graph.
    """

    def __init__(self, clip_model: nn.Module, phi: nn.Module, placeholder_id: int,
                 placeholder_policy: str = PLACEHOLDER_ALL, l2_normalize: bool = False):
        super().__init__()
        self.clip = clip_model
        self.phi = phi
        self.placeholder_id = int(placeholder_id)
        self.placeholder_policy = check_placeholder_policy(placeholder_policy)
        self.l2_normalize = bool(l2_normalize)

    def forward(self, image_features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self.l2_normalize:
            image_features = F.normalize(image_features, dim=-1, eps=NORM_EPS)
        pseudo = self.phi(image_features)  # [B, W]
        query = encode_text_with_pseudo(self.clip, ids, pseudo, self.placeholder_id, self.placeholder_policy)
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


def sum_query(v_img: torch.Tensor, v_txt: torch.Tensor) -> torch.Tensor:
    """BGE-VL-CLIP's composed query: normalize(raw image feature + raw text feature).

    The inputs are the unnormalized projected features (`encode_image` / `encode_text`, Hugging Face's
    `get_image_features` / `get_text_features`), added as BGE-VL's evaluation code adds them."""
    return F.normalize(v_img + v_txt, dim=-1, eps=NORM_EPS)
