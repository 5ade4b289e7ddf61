"""LoRA on the linear layers of open_clip's image encoder, and merging it back into plain weights.

delta W = B @ A * alpha / rank, A [r, in] Kaiming-uniform, B [out, r] zeros (so training starts from
the pretrained encoder). Two attachments, because attention modules read their projection weights
directly instead of calling their nn.Linear (nn.MultiheadAttention's `out_proj`, open_clip's
ModifiedResNet `AttentionPool2d` q/k/v/c_proj): one probe forward pass tells which linears are called.
- a linear that is called (ViT MLP `c_fc`, `c_proj`): a forward hook adds B(A(dropout(x))) * scale,
  the standard LoRA with input dropout;
- a linear whose weight is read directly, and nn.MultiheadAttention's fused q/k/v `in_proj_weight`
  [3E, E]: a weight parametrization W + B @ A * scale. The input never passes through the adapter,
  so LoRA's input dropout cannot apply there: these adapters train without dropout.
Convolutions are not adapted (a ResNet tower gets LoRA on its attention pooling only).
`merged_state_dict` gives the model's state dict with every delta folded into its weight and the
original key names, loadable by open_clip into the unmodified architecture.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from zscir_train.training.config import ConfigError

PARAMETRIZED = ".parametrizations."
HOOK_LORA = ".lora."


class LoRADelta(nn.Module):
    """B @ A * scale for a weight [out, in]."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = alpha / rank

    def delta(self) -> torch.Tensor:  # [out, in]
        return self.B @ self.A * self.scale


class WeightLoRA(LoRADelta):
    """Parametrization: the weight seen by the module is W + delta."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().to(weight.dtype)


class InputLoRA(LoRADelta):
    """The LoRA branch of an nn.Linear: B(A(dropout(x))) * scale, added to its output by a hook."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__(linear.out_features, linear.in_features, rank, alpha)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        x = self.dropout(x)
        return (x @ self.A.T.to(x.dtype)) @ self.B.T.to(x.dtype) * self.scale


def _add_lora_branch(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.lora(inputs[0])


def _called_linears(encoder: nn.Module, example: torch.Tensor) -> set[int]:
    """ids of the nn.Linear modules whose forward runs when `encoder(example)` runs."""
    called: set[int] = set()
    handles = [m.register_forward_hook(lambda module, inputs, output: called.add(id(module)))
               for m in encoder.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            encoder(example)
    finally:
        for handle in handles:
            handle.remove()
    return called


def add_lora(encoder: nn.Module, example: torch.Tensor, rank: int, alpha: float, dropout: float) -> int:
    """Attach LoRA to every linear map of `encoder` (in place); returns how many weights were adapted.

    example: one input batch (e.g. zeros [1, 3, S, S]) for the probe pass.
    """
    called = _called_linears(encoder, example)
    count = 0
    for mha in [m for m in encoder.modules() if isinstance(m, nn.MultiheadAttention)]:
        if mha._qkv_same_embed_dim:
            out, inp = mha.in_proj_weight.shape
            parametrize.register_parametrization(mha, "in_proj_weight", WeightLoRA(out, inp, rank, alpha))
            count += 1
    for module in [m for m in encoder.modules() if isinstance(m, nn.Linear)]:
        if id(module) in called:
            module.lora = InputLoRA(module, rank, alpha, dropout)
            module.register_forward_hook(_add_lora_branch)
        else:
            parametrize.register_parametrization(
                module, "weight", WeightLoRA(module.out_features, module.in_features, rank, alpha))
        count += 1
    if count == 0:
        raise ConfigError(f"{type(encoder).__name__} has no linear layer to adapt with LoRA: TAT needs an image "
                          "encoder with linear or attention layers (a ViT, or a ResNet with attention pooling).")
    return count


def lora_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with LoRA folded in: original key names, no LoRA tensors."""
    state = {}
    for key, value in model.state_dict().items():
        if HOOK_LORA in key:
            continue
        if PARAMETRIZED in key:
            if key.endswith(".original"):
                owner, rest = key.split(PARAMETRIZED)
                name = rest.removesuffix(".original")
                state[f"{owner}.{name}"] = getattr(model.get_submodule(owner), name).detach().clone()
            continue
        state[key] = value.detach().clone()
    for name, module in model.named_modules():
        if isinstance(getattr(module, "lora", None), InputLoRA):
            weight = state[f"{name}.weight"]
            state[f"{name}.weight"] = weight + module.lora.delta().to(weight.dtype)
    return state
