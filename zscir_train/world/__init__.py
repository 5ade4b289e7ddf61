"""The synthetic shapes world: generator, tiny CLIP, CIR query sets in the official formats, baselines.

`world_clip_path()` is the committed tiny CLIP: `load_backbone("world-clip", str(world_clip_path()))`.
"""

from __future__ import annotations

from pathlib import Path

WORLD_CLIP_DIR = Path(__file__).resolve().parent.parent / "weights" / "world-clip"
WORLD_CLIP_WEIGHTS = "world-clip.safetensors"
WORLD_CLIP_ZERO_SHOT = "zero_shot.json"


def world_clip_path() -> Path:
    """Path of the committed world-clip weights (fp16 safetensors of the open_clip state_dict)."""
    path = WORLD_CLIP_DIR / WORLD_CLIP_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the world-clip weights ship with zscir_train; reinstall the package or "
            "train them with `zscir-train world-clip`."
        )
    return path
