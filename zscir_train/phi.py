"""phi: the projection network that maps an image embedding [B, D] to one text token embedding [B, W].

Two published forms:
- "lincir" (LinCIR and SEARLE share it): Linear(D, 4D) GELU Dropout(0.5) Linear(4D, 4D) GELU Dropout
  Linear(4D, W); official checkpoints name the linears layers.0, layers.3, layers.6.
- "pic2word" (IM2TEXT): two blocks [Linear, Dropout(0.1), ReLU] with hidden 512, then Linear(512, W);
  official checkpoints name them fc_out / layers.{0,1}.{0,...}.
"""

from __future__ import annotations

import torch
from torch import nn

from zscir_infer.contract import PHI_KINDS

LINCIR_EXPANSION = 4  # hidden = 4 * D in LinCIR/SEARLE
LINCIR_DROPOUT = 0.5
PIC2WORD_HIDDEN = 512
PIC2WORD_DROPOUT = 0.1
PIC2WORD_BLOCKS = 2


class LinCIRPhi(nn.Module):
    """LinCIR/SEARLE phi. Keys match the official checkpoints' `Phi` state dict."""

    def __init__(self, embed_dim: int, width: int, hidden_dim: int | None = None, dropout: float = LINCIR_DROPOUT):
        super().__init__()
        hidden_dim = hidden_dim or LINCIR_EXPANSION * embed_dim
        self.embed_dim, self.width, self.hidden_dim = embed_dim, width, hidden_dim
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, D] -> [B, W]
        return self.layers(x)


class Pic2WordPhi(nn.Module):
    """Pic2Word's IM2TEXT. Keys match the official `state_dict_img2text` (without `module.`)."""

    def __init__(self, embed_dim: int, width: int, hidden_dim: int = PIC2WORD_HIDDEN,
                 n_blocks: int = PIC2WORD_BLOCKS, dropout: float = PIC2WORD_DROPOUT):
        super().__init__()
        self.embed_dim, self.width, self.hidden_dim = embed_dim, width, hidden_dim
        self.fc_out = nn.Linear(hidden_dim, width)
        blocks, dim = [], embed_dim
        for _ in range(n_blocks):
            blocks.append(nn.Sequential(nn.Linear(dim, hidden_dim), nn.Dropout(dropout), nn.ReLU()))
            dim = hidden_dim
        self.layers = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, D] -> [B, W]
        for block in self.layers:
            x = block(x)
        return self.fc_out(x)


def build_phi(kind: str, embed_dim: int, width: int, hidden_dim: int | None = None) -> nn.Module:
    """phi of the given form for a backbone with projected dim D=embed_dim and text width W=width."""
    if kind == "lincir":
        return LinCIRPhi(embed_dim, width, hidden_dim)
    if kind == "pic2word":
        return Pic2WordPhi(embed_dim, width, hidden_dim or PIC2WORD_HIDDEN)
    raise ValueError(f"Unknown phi kind '{kind}': use one of {PHI_KINDS}.")


def phi_kind(phi: nn.Module) -> str:
    if isinstance(phi, LinCIRPhi):
        return "lincir"
    if isinstance(phi, Pic2WordPhi):
        return "pic2word"
    raise TypeError(f"{type(phi).__name__} is not a zscir phi.")
