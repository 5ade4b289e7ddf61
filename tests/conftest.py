"""Shared test setup. Fixture modules of each area live in tests/fixtures/ and are all loaded here.

torch is imported lazily (in the fixtures that need it, and here only to cap its threads): the runtime's
tests run in an environment without torch (the base install), see tests/test_infer_torch_free.py."""

import os
from pathlib import Path

import pytest

# OpenMP threads sleep at barriers instead of spinning (zscir-train sets the same): torch's spinning
# threads in one test process took the cores from every other process on a 2-core machine
# (results/bench/load). Set before anything imports torch; a value already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TORCH_THREADS = 2
TINY_BACKBONE_SEED = 20241201

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)


def pytest_configure(config):
    """Cap torch's intra-op threads where torch is installed (the machines the suite runs on are small)."""
    try:
        import torch
    except ImportError:  # the runtime's tests need no torch
        return
    torch.set_num_threads(TORCH_THREADS)


@pytest.fixture(scope="session")
def tiny_backbone():
    """The tiny random open_clip config used across the suite (D=48, W=80, 32 px).

    Seeded: its weights must not depend on which tests ran first (int8 accuracy and every golden file
    are computed from them)."""
    import torch

    from zscir_train.backbone import load_backbone

    with torch.random.fork_rng():
        torch.manual_seed(TINY_BACKBONE_SEED)
        return load_backbone("zscir-tiny")
