"""The synthetic shapes world: generator, tiny CLIP, CIR query sets in the official formats, baselines.

`world_clip_path()` is the committed tiny CLIP: `load_backbone("world-clip", str(world_clip_path()))`.
"""

from __future__ import annotations

from pathlib import Path

from zscir_infer.errors import ZscirError

WORLD_CLIP_DIR = Path(__file__).resolve().parent.parent / "weights" / "world-clip"
WORLD_CLIP_WEIGHTS = "world-clip.safetensors"
WORLD_CLIP_ZERO_SHOT = "zero_shot.json"


class WorldError(ZscirError, ValueError):
    """The world or world-clip cannot be built or read as asked; the message says what to change."""


class WorldExistsError(ZscirError, FileExistsError):
    """The output folder already holds something (pass --force to replace it)."""


class WorldFileMissingError(ZscirError, FileNotFoundError):
    """A file the world commands need (world.json, world-clip weights) is not there."""


def world_clip_path() -> Path:
    """Path of the committed world-clip weights (fp16 safetensors of the open_clip state_dict)."""
    path = WORLD_CLIP_DIR / WORLD_CLIP_WEIGHTS
    if not path.is_file():
        raise WorldFileMissingError(
            f"{path} is missing: the world-clip weights ship with zscir_train; reinstall the package or "
            "train them with `zscir-train world-clip`."
        )
    return path
