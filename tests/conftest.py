"""Shared test setup. Fixture modules of each area live in tests/fixtures/ and are all loaded here."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)
TINY_BACKBONE_SEED = 20241201

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)


@pytest.fixture(scope="session")
def tiny_backbone():
    """The tiny random open_clip config used across the suite (D=48, W=80, 32 px).

    Seeded: its weights must not depend on which tests ran first (int8 accuracy and every golden file
    are computed from them)."""
    from zscir_train.backbone import load_backbone

    with torch.random.fork_rng():
        torch.manual_seed(TINY_BACKBONE_SEED)
        return load_backbone("zscir-tiny")
