"""Validation during training: CIRR / CIRCO val splits (or a shapes world's) through the evaluation harness.

The harness (`zscir_eval.harness.run_benchmark`) reads the split in its official layout and scores an
encoder with the runtime's interface; here the encoder is the PyTorch reference
(`zscir_train.reference.TorchReference`, on the training device) built on the weights being trained.
For methods whose image encoder is frozen (LinCIR, Pic2Word) the gallery features are computed once per
run and kept in memory; TAT changes the image encoder, so its gallery is re-encoded at every validation.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from zscir_eval.harness import READERS, Harness, run_benchmark
from zscir_train.training.config import ConfigError, LoopConfig

HEADLINE = {"cirr": "R@1", "circo": "mAP@5"}  # LinCIR keeps the checkpoint with the best CIRR R@1


class _GalleryCachingHarness(Harness):
    """Harness whose gallery features are kept in memory (valid while the image encoder is frozen)."""

    def __init__(self, encoder, cache: dict | None, **kwargs):
        super().__init__(encoder, "training", None, **kwargs)  # (encoder, image-space id, no disk cache)
        self.memory = cache

    def gallery_features(self, refs):
        if self.memory is None:
            return super().gallery_features(refs)
        key = tuple((ref.key, str(ref.path)) for ref in refs)
        if key not in self.memory:
            self.memory[key] = super().gallery_features(refs)
        return self.memory[key]


class Validator:
    """The validation sets of a run; `score` returns {"cirr/R@1": ..., "circo/mAP@5": ...} in percent."""

    def __init__(self, sets: list[tuple[str, Path]], batch_size: int, console: Console | None = None):
        if not sets:
            raise ConfigError("--val-every needs a validation set: --val-world, --val-cirr or --val-circo.")
        for benchmark, root in sets:
            READERS[benchmark](root, "val")  # fail now, not after the first training steps
        self.sets = sets
        self.batch_size = batch_size
        self.console = console or Console(stderr=True)
        self.gallery: dict = {}
        self.default_metric = f"{sets[0][0]}/{HEADLINE[sets[0][0]]}"

    @classmethod
    def from_config(cls, cfg: LoopConfig, console: Console | None = None) -> Validator | None:
        if not cfg.val_every:
            return None
        sets = []
        if cfg.val_world:
            world = Path(cfg.val_world)
            if not (world / "world.json").is_file():
                raise ConfigError(f"--val-world {world} has no world.json: generate it with `zscir-train world --out {world}`.")
            sets += [("cirr", world / "cirr"), ("circo", world / "circo")]
        sets += [("cirr", Path(cfg.val_cirr))] if cfg.val_cirr else []
        sets += [("circo", Path(cfg.val_circo))] if cfg.val_circo else []
        return cls(sets, cfg.val_batch_size, console)

    def score(self, encoder, method: str, frozen_image_encoder: bool = True) -> dict[str, float]:
        harness = _GalleryCachingHarness(encoder, self.gallery if frozen_image_encoder else None,
                                         batch_size=self.batch_size, console=self.console)
        metrics = {}
        for benchmark, root in self.sets:
            result = run_benchmark(harness, benchmark, root, split="val", method=method)
            metrics |= {f"{benchmark}/{k}": float(v) for k, v in result.metrics.items()}
        return metrics
