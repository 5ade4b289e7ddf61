"""Training cost: LinCIR (captions only) vs Pic2Word (images) on the same backbone and batch, in one run.

LinCIR's headline is that language-only training is 6x to 17.6x faster than image-based training.
This runs zscir's own training code (`zscir_train.training`: `lincir_task`, `pic2word_task`, their
losses, datasets and the optimizer and schedule the loop builds) and times, per backbone with random
weights and for one optimizer step at the same global batch:
- compute: the loop's inner step (loss, backward, AdamW step, schedule) on a batch already in memory;
- data: what the task's dataset does to make that batch in the training process: for LinCIR gathering
  the caption and masked-caption ids from the masking cache, for Pic2Word reading, decoding and
  random-resized-cropping photo-sized JPEG files; the self-masking itself (spaCy keywords + tokenizer)
  runs once per corpus and is reported separately, per caption;
and from them samples/s compute-only and with the data made in the same process (no loader workers:
on 2 cores they would compete with the step for the same cores).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from zscir_bench import samples
from zscir_bench.timing import Policy, measure
from zscir_train.training.lincir import LinCIRConfig, lincir_task
from zscir_train.training.loop import Dist, MicroBatch, lr_factor
from zscir_train.training.masking import load_spacy, self_mask
from zscir_train.training.pic2word import Pic2WordConfig, pic2word_task

DEFAULT_MODELS = ("zscir-tiny", "ViT-B-32", "ViT-L-14")
DEFAULT_BATCH = 32
STEP_POLICY = Policy(warmup=1, min_reps=3, min_seconds=5.0, max_reps=20)
DATA_POLICY = Policy(warmup=1, min_reps=3, min_seconds=1.0, max_reps=50)
MASKING_CORPUS = 512  # captions in the LinCIR corpus (masked once; the one-off cost is per caption)
TOTAL_STEPS = 20_000  # what the schedules are built for (LinCIR's ~20k steps); only the shape matters here


class TrainStep:
    """One optimizer step of a zscir training task, as `zscir_train.training.loop.run` performs it."""

    def __init__(self, task, cfg, precision: str):
        self.task, self.cfg = task, cfg
        self.optimizer = torch.optim.AdamW(task.param_groups(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.schedule, cfg.warmup_steps, TOTAL_STEPS))
        self.precision = precision
        self.step_index = 0

    def __call__(self, batch) -> float:
        self.task.module.train()
        micro = MicroBatch(self.step_index, 0, self.cfg.batch_size, self.cfg.batch_size)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            loss = self.task.loss(self.task.module, batch, micro)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step_index += 1
        return float(loss.detach())


def _items(batch_size: int, n: int) -> list[tuple[int, int]]:
    """(sample index, stream position) pairs, as the loop's sampler hands them to a dataset."""
    return [(i % n, i) for i in range(batch_size)]


def lincir_setup(model: str, batch_size: int, work: Path) -> tuple[object, LinCIRConfig, Callable, dict]:
    """(task, config, make_batch, one-off masking cost) with a masked synthetic caption corpus."""
    captions = samples.captions(max(batch_size, MASKING_CORPUS))
    corpus_file = work / "captions.txt"
    corpus_file.write_text("\n".join(captions) + "\n")
    cfg = LinCIRConfig(model=model, batch_size=batch_size, captions=[str(corpus_file)],
                       cache_dir=str(work / "masking-cache"), progress=False)
    task = lincir_task(cfg, Dist())
    t0 = time.perf_counter()
    self_mask(captions, load_spacy(cfg.spacy_model), task.backbone.tokenizer)
    one_off = {"captions": len(captions), "captions_per_s": len(captions) / (time.perf_counter() - t0)}
    items = _items(batch_size, len(task.dataset))
    return task, cfg, lambda: task.dataset.__getitems__(items), one_off


def pic2word_setup(model: str, batch_size: int, work: Path) -> tuple[object, Pic2WordConfig, Callable]:
    """(task, config, make_batch) over photo-sized JPEG files."""
    folder = work / "images"
    samples.write_jpegs(folder, batch_size)
    cfg = Pic2WordConfig(model=model, batch_size=batch_size, images=[str(folder)], progress=False)
    task = pic2word_task(cfg, Dist())
    items = _items(batch_size, len(task.dataset))
    return task, cfg, lambda: task.dataset.collate([task.dataset[item] for item in items])


def method_cost(task, cfg, make_batch: Callable, precision: str, step_policy: Policy, data_policy: Policy) -> dict:
    batch_size = cfg.batch_size
    data = measure(make_batch, batch_size, data_policy)
    batch = make_batch()
    step = TrainStep(task, cfg, precision)
    compute = measure(lambda: step(batch), batch_size, step_policy)
    end_to_end = batch_size / ((data.mean_ms + compute.mean_ms) / 1e3)
    return {"step": compute.to_dict(), "data": data.to_dict(), "step_s": compute.mean_ms / 1e3,
            "data_s": data.mean_ms / 1e3, "samples_per_s_compute": compute.items_per_s,
            "samples_per_s_with_data": end_to_end, "optimizer": _optimizer_json(cfg)}


def _optimizer_json(cfg) -> dict:
    return {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "betas": list(cfg.betas), "eps": cfg.eps,
            "schedule": cfg.schedule, "warmup_steps": cfg.warmup_steps}


def backbone_cost(name: str, batch_size: int, precision: str, threads: int,
                  step_policy: Policy = STEP_POLICY, data_policy: Policy = DATA_POLICY) -> dict:
    """Both methods on one backbone with random weights (speed does not depend on the weights)."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        task, cfg, make_batch, masking = lincir_setup(name, batch_size, work)
        lincir = {**method_cost(task, cfg, make_batch, precision, step_policy, data_policy), "one_off_masking": masking}
        backbone = task.backbone
        del task
        task, cfg, make_batch = pic2word_setup(name, batch_size, work)
        pic2word = method_cost(task, cfg, make_batch, precision, step_policy, data_policy)
        del task
    return {
        "backbone": name, "batch": batch_size, "precision": precision, "threads": threads,
        "image_size": backbone.preprocess.image_size, "embed_dim": backbone.embed_dim, "width": backbone.width,
        "lincir": lincir, "pic2word": pic2word,
        "speedup_compute": pic2word["step_s"] / lincir["step_s"],
        "speedup_with_data": lincir["samples_per_s_with_data"] / pic2word["samples_per_s_with_data"],
    }
