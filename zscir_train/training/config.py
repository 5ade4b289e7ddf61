"""The options every training method shares (`LoopConfig`) and the presets that fill them.

A preset is a JSON file in `presets/` (or any path): {"method", "description", "config": {...}}.
`resolve_config` layers the method's defaults, then the preset, then the options given on the command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from zscir_infer.errors import ZscirError

PRESET_DIR = Path(__file__).parent / "presets"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # training autocast; not the exported graphs' precisions
SCHEDULES = ("constant", "cosine")


class ConfigError(ZscirError, ValueError):
    """A training option is invalid; the message names it and what to change."""


@dataclass
class LoopConfig:
    """Options every method shares. `batch_size` is the global batch of one optimizer step."""

    model: str = "zscir-tiny"
    pretrained: str | None = None
    out: str = "phi.safetensors"
    run_dir: str | None = None  # default: <out without suffix>-run next to --out
    steps: int = 1000
    batch_size: int = 512
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "constant"
    warmup_steps: int = 0
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    val_every: int = 0  # 0: no validation (the last weights are the artifact)
    val_world: str | None = None  # a shapes world: its cirr/ and circo/ val splits
    val_cirr: str | None = None
    val_circo: str | None = None
    val_metric: str | None = None  # e.g. "cirr/R@1" (LinCIR's choice); default: the first set's headline
    val_batch_size: int = 64
    num_workers: int = 0
    threads: int | None = None  # torch CPU threads per process
    resume: bool = False
    progress: bool = True
    preset: str | None = None  # recorded, not read: presets are applied by `resolve_config`

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision '{self.precision}' is not one of {PRECISIONS}.")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule '{self.schedule}' is not one of {SCHEDULES}.")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")

    @property
    def run_path(self) -> Path:
        out = Path(self.out)
        return Path(self.run_dir) if self.run_dir else out.with_name(out.name.split(".")[0] + "-run")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str) -> dict:
    """A preset by name (presets/NAME.json) or path: {"method", "description", "config": {...}}."""
    path = Path(name) if name.endswith(".json") else PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"Unknown preset '{name}': use a path to a JSON file or one of {list_presets()}.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"Preset {path} is not valid JSON ({exc}).") from exc


def resolve_config(cls, method: str, preset: str | None, overrides: dict):
    """cls(...) from its defaults, then the preset's values, then the options given (None = not given)."""
    values = {}
    if preset is not None:
        data = load_preset(preset)
        if data.get("method") != method:
            raise ConfigError(f"Preset '{preset}' is for '{data.get('method')}', not '{method}'.")
        values.update(data["config"])
        values["preset"] = preset
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"Unknown {method} option(s) {unknown} (from preset '{preset}').")
    return cls(**values)
