"""Two CPU processes with gloo: identical weights on both ranks, equal to one process with the same
global batch (LinCIR's MSE and Pic2Word's gathered InfoNCE).

Tolerance against one process: 1e-5 absolute on every weight after 4 AdamW steps. The ranks reduce
their halves of the batch separately (summation order differs from one process), so float32 rounding
differences remain; a missing gradient average, a wrong data shard or a wrong gather scale would be
off by ~lr (1e-3) or more. phi's dropout is set to 0 here: dropout masks come from each rank's own
RNG stream, so with dropout the runs are equal in distribution, not bit for bit.
"""

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zscir_train.training.lincir import LinCIRConfig, lincir_task
from zscir_train.training.loop import prepare_run, run
from zscir_train.training.pic2word import Pic2WordConfig, pic2word_task

WORLD_SIZE = 2
SINGLE_PROCESS_TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configs(world: Path, weights: Path, cache: Path, out: Path, tag: str) -> list:
    common = dict(model="zscir-tiny", pretrained=str(weights), steps=4, batch_size=16, lr=1e-3, phi_dropout=0.0,
                  threads=1, progress=False, checkpoint_every=1000)
    return [
        LinCIRConfig(captions=[str(world / "corpus" / "captions.txt")], cache_dir=str(cache),
                     out=str(out / f"lincir-{tag}.safetensors"), **common),
        Pic2WordConfig(images=[str(world / "train" / "unlabeled.txt")], warmup_steps=1,
                       out=str(out / f"pic2word-{tag}.safetensors"), **common),
    ]


def train_and_dump(cfgs: list, out: Path, rank: int) -> None:
    for cfg, build in zip(cfgs, (lincir_task, pic2word_task), strict=True):
        d = prepare_run(cfg)
        task = build(cfg, d)
        run(task, cfg, d)
        torch.save(task.module.state_dict(), out / f"{task.name}-rank{rank}.pt")


def worker(rank: int, port: int, cfgs: list, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train_and_dump(cfgs, out, rank)
    dist.destroy_process_group()


def test_two_ranks_agree_and_match_one_process(train_world, tiny_weights, masking_cache, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir()
    double.mkdir()
    train_and_dump(configs(train_world, tiny_weights, masking_cache, single, "single"), single, rank=0)  # caches spaCy too
    cfgs = configs(train_world, tiny_weights, masking_cache, double, "double")
    mp.spawn(worker, args=(free_port(), cfgs, double), nprocs=WORLD_SIZE, join=True)
    for method in ("lincir", "pic2word"):
        rank0, rank1 = (torch.load(double / f"{method}-rank{r}.pt") for r in range(WORLD_SIZE))
        one = torch.load(single / f"{method}-rank0.pt")
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), f"{method} {key} differs between ranks"
            diff = (rank0[key] - one[key]).abs().max().item()
            assert diff <= SINGLE_PROCESS_TOLERANCE, f"{method} {key}: {diff} from one process"
