"""TensorRT engines at export time (`zscir-export --engine trt`), into the bundle being written.

The planning and the build itself live in the torch-free `zscir_infer.engines`, so a deployment
machine rebuilds engines for its own GPU and TensorRT from the bundle alone (engines are specific to
both); this module only checks up front that a build can run here and forwards the export's options.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zscir_infer.engines import (
    DEFAULT_PROFILES,
    ENGINE_PRECISIONS,
    EngineError,
    Profile,
    build_bundle_engines,
    check_profiles,
    tensorrt_unavailable_reason,
)

REBUILD_HINT = (
    "Engines are specific to a GPU and a TensorRT version: export without --engine here, then build them on "
    "the deployment machine with `zscir-infer engines BUNDLE` (torch-free)."
)


@dataclass(frozen=True)
class EngineOptions:
    precisions: tuple[str, ...] = ("fp16",)
    profiles: tuple[Profile, ...] = DEFAULT_PROFILES
    timing_cache_dir: Path | None = None

    def __post_init__(self):
        unknown = [p for p in self.precisions if p not in ENGINE_PRECISIONS]
        if unknown:
            raise EngineError(f"Engine precisions {unknown} are not buildable; use {ENGINE_PRECISIONS}.")
        check_profiles(self.profiles)


def require_tensorrt() -> None:
    """Refuse --engine trt before any export work when TensorRT or a GPU is missing, saying why."""
    reason = tensorrt_unavailable_reason()
    if reason:
        raise EngineError(f"--engine trt cannot build engines on this machine: {reason}. {REBUILD_HINT}")


def build_engines(bundle_dir: Path, graphs: dict, options: EngineOptions,
                  context_length: int | None = None) -> list[dict]:
    """Engines for every graph of the bundle being written; returns the manifest's `engines` entries.

    context_length: the upper end of the sequence axis of sequence-adaptive text graphs' profiles."""
    return build_bundle_engines(bundle_dir, {"graphs": graphs, "context_length": context_length},
                                options.precisions, options.profiles,
                                timing_cache_dir=options.timing_cache_dir)
