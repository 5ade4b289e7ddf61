"""LinCIR: train phi from captions alone (DESIGN §1; navervision/lincir `train_phi.py`).

Per caption: e_T = the frozen text encoder's unnormalized projected embedding of the caption; phi's
input is e_T + s * eps with s ~ U(0, 1) per sample and eps ~ N(0, I) (`input_features += 1.0 *
torch.rand(B).unsqueeze(-1) * torch.randn(B, D)` in the official code, no L2 normalization); the
masked caption (keyword runs -> `$`, see masking.py) is encoded with phi's output at every placeholder,
and the loss is the MSE between that embedding and e_T. Gradients flow through the frozen text
encoder into phi. AdamW lr 1e-4, weight decay 0.01 on every parameter, constant schedule.

The noise of a step is drawn for the whole global batch from a generator keyed by (seed, step), and
each rank takes its slice, so N processes see exactly the noise one process would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from zscir_train.backbone import Backbone, load_backbone
from zscir_train.phi import LINCIR_DROPOUT, build_phi
from zscir_train.training.config import ConfigError, LoopConfig
from zscir_train.training.distributed import Dist, main_first
from zscir_train.training.loop import MicroBatch, prepare_run, run
from zscir_train.training.masking import DEFAULT_SPACY_MODEL, SPACY_BATCH, MaskedCorpus, build_masked_corpus
from zscir_train.training.phi_task import PhiTask, set_dropout
from zscir_train.training.state import derived_seed
from zscir_train.training.text import encode_text_trimmed
from zscir_train.training.validation import Validator

NOISE_STREAM = 0x4015E
NOISE_SCALE = 1.0  # LinCIR: input + 1.0 * U(0,1) * N(0, I)
CACHE_ENV = "ZSCIR_CACHE_DIR"  # the one cache folder of zscir (bundle hashes, engines, masked corpora)


def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "zscir"
    return Path(root) / "masked-captions"


@dataclass
class LinCIRConfig(LoopConfig):
    out: str = "lincir.safetensors"
    captions: list[str] = field(default_factory=list)
    caption_column: str | None = None
    spacy_model: str = DEFAULT_SPACY_MODEL
    spacy_batch: int = SPACY_BATCH
    spacy_processes: int = 1
    cache_dir: str | None = None  # default: $ZSCIR_CACHE_DIR or ~/.cache/zscir, then masked-captions/
    noise_scale: float = NOISE_SCALE
    phi_dropout: float = LINCIR_DROPOUT


class CaptionPairs:
    """(caption ids, masked ids) [b, L] int64 from the memory-mapped masked corpus; batched reads."""

    def __init__(self, corpus: MaskedCorpus):
        self.corpus = corpus

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitems__(self, items: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        index = np.fromiter((i for i, _ in items), dtype=np.int64, count=len(items))
        original = torch.from_numpy(self.corpus.original[index].astype(np.int64))
        masked = torch.from_numpy(self.corpus.masked[index].astype(np.int64))
        return original, masked

    @staticmethod
    def collate(batch):
        return batch


class LinCIRTask(PhiTask):
    name = "lincir"

    def __init__(self, backbone: Backbone, phi: nn.Module, corpus: MaskedCorpus, cfg: LinCIRConfig, device):
        super().__init__(backbone, phi, device)
        self.cfg = cfg
        self.dataset = CaptionPairs(corpus)

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.module.parameters()), "weight_decay": self.cfg.weight_decay}]

    def noise(self, micro: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """eps [b, D] and s [b, 1] of this micro-batch, sliced from the step's global draw."""
        g = torch.Generator().manual_seed(derived_seed(NOISE_STREAM, self.cfg.seed, micro.step))
        eps = torch.randn(micro.global_batch, self.backbone.embed_dim, generator=g)
        s = torch.rand(micro.global_batch, 1, generator=g)
        rows = slice(micro.offset, micro.offset + micro.size)
        return eps[rows].to(self.device), s[rows].to(self.device)

    def loss(self, model: nn.Module, batch, micro: MicroBatch) -> torch.Tensor:
        original, masked = (t.to(self.device, non_blocking=True) for t in batch)
        clip = self.backbone.model
        with torch.no_grad():
            e_t = encode_text_trimmed(clip, original).float()  # [b, D] unnormalized
        eps, s = self.noise(micro)
        pseudo = model(e_t + self.cfg.noise_scale * s * eps)  # [b, W]
        predicted = encode_text_trimmed(clip, masked, pseudo, self.placeholder_id)  # [b, D]
        return F.mse_loss(predicted.float(), e_t)


def lincir_task(cfg: LinCIRConfig, d: Dist) -> LinCIRTask:
    """Backbone, masked corpus (rank 0 builds the cache, the others read it) and a fresh phi."""
    if not cfg.captions:
        raise ConfigError("lincir needs caption sources: --captions FILE [FILE ...].")
    backbone = load_backbone(cfg.model, cfg.pretrained, device=d.device)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    corpus = main_first(d, lambda: build_masked_corpus(
        cfg.captions, cfg.caption_column, backbone.tokenizer, cache_dir, cfg.spacy_model, cfg.spacy_batch,
        cfg.spacy_processes, show_progress=cfg.progress and d.is_main))
    phi = build_phi("lincir", backbone.embed_dim, backbone.width)
    set_dropout(phi, cfg.phi_dropout)
    return LinCIRTask(backbone, phi, corpus, cfg, d.device)


def train_lincir(cfg: LinCIRConfig, console: Console | None = None) -> dict:
    """Mask the corpus (cached), train phi, write cfg.out (the best validated or the last phi)."""
    console = console or Console(stderr=True)
    d = prepare_run(cfg)
    validator = Validator.from_config(cfg, console) if d.is_main else None
    task = lincir_task(cfg, d)
    summary = run(task, cfg, d, validator, console)
    return {**summary, "masking": {"cache": str(task.dataset.corpus.path), **task.dataset.corpus.meta["kinds"]}}
