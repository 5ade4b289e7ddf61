"""Shared test setup. Fixture modules of each area live in tests/fixtures/ and are all loaded here."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)


@pytest.fixture(scope="session")
def tiny_backbone():
    """The tiny random open_clip config used across the suite (D=48, W=80, 32 px)."""
    from zscir_train.backbone import load_backbone

    return load_backbone("zscir-tiny")
