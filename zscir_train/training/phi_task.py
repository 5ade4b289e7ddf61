"""What the phi methods (LinCIR, Pic2Word) share: phi is what is trained, it is validated through the
PyTorch reference on the training device, and its artifact is a zscir phi checkpoint.

A method subclasses `PhiTask` with its `name` (the checkpoint's method, which fixes phi's form, the
placeholder and the default template), a dataset and its `loss`; the loop does the rest.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from zscir_infer.contract import PHI
from zscir_train.backbone import Backbone
from zscir_train.checkpoint import METHOD_PLACEHOLDER, meta_for, save_phi_checkpoint
from zscir_train.composed import placeholder_token_id
from zscir_train.reference import TorchReference
from zscir_train.training.validation import Validator


def set_dropout(module: nn.Module, p: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


class PhiTask:
    """The trainable phi of a method, with the validation, state and saving every phi method shares."""

    name: str  # lincir | pic2word: the method recorded in the checkpoint

    def __init__(self, backbone: Backbone, phi: nn.Module, device: torch.device):
        self.backbone, self.device = backbone, device
        self.module = phi.to(device)
        self.placeholder_id = placeholder_token_id(backbone.tokenizer, METHOD_PLACEHOLDER[self.name])

    def train_mode(self) -> None:
        self.module.train()  # phi only: dropout on; the CLIP model stays in eval mode

    def validate(self, validator: Validator) -> dict[str, float]:
        meta = meta_for(self.module, self.backbone, self.name)
        reference = TorchReference(self.backbone, self.module, meta, batch_size=validator.batch_size,
                                   device=self.device)
        return validator.score(reference, PHI)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)

    def save(self, path: Path, training: dict) -> None:
        save_phi_checkpoint(path, self.module, meta_for(self.module, self.backbone, self.name, training=training))
