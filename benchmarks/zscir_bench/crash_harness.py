"""SIGKILL crash harness for the three long-running writers: `zscir-infer index`, `zscir-export` and a
training run (`zscir-train lincir`).

Each trial starts the real command as a fresh process and kills it with SIGKILL at a random time in
[0, T], T being the wall time of one uninterrupted run. After every kill the artifact must be either
the previous complete version or the new complete one (checked by loading it, with every sha256);
after the last kill the command is re-run (with `--resume` where the job has state) and must end equal
to an uninterrupted run: the same gallery with no duplicate or missing entry, a complete bundle, the
same trained weights.

    python -m zscir_bench.crash_harness --kills 20 --out results/reliability/crash.json

It needs the `[train]` extra (the trials export and train). The test suite runs the same trials with a
few kills per command (tests/test_bench_crash_safety.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zscir_infer.contract import sha256_file

SEED = 20241201
RESUME_TOLERANCE = 1e-6  # exact resume: the same weights as an uninterrupted run (issue 4)
FEATURE_TOLERANCE = 1e-5
N_IMAGES = 120
TRAIN_STEPS, TRAIN_CHECKPOINT_EVERY = 24, 3
RUN_TIMEOUT = 300.0
POLL_SECONDS = 0.003
EXTRA_SECONDS = 0.3  # after a progress point, the kill comes within this
MAX_TRIALS_PER_KILL = 3  # a trial whose command finished first is not a kill: try again, within limits
EXPORT_FILES = 20  # about what an fp16 bundle holds (graphs, tokenizer, golden files), manifest last
# The training trials' caption corpus: a small shapes world at zscir-tiny's 32 px (the training tests' size).
CORPUS_WORLD = dict(seed=5, image_size=32, train_images=96, val_images=48, test_images=60, captions_per_image=2,
                    corpus_captions=400, val_queries=16, test_queries=20, domain_queries=2)


@dataclass
class Outcome:
    """What the kills of one command found: kills, the states they left, and every failure seen."""

    command: str
    kills: int = 0
    states: dict[str, int] = field(default_factory=dict)  # state after a kill -> count
    failures: list[str] = field(default_factory=list)
    seconds_uninterrupted: float = 0.0

    def saw(self, state: str) -> None:
        self.states[state] = self.states.get(state, 0) + 1

    def to_dict(self) -> dict:
        return {"command": self.command, "kills": self.kills, "states": self.states, "failures": self.failures,
                "seconds_uninterrupted": round(self.seconds_uninterrupted, 2)}


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _env(work: Path) -> dict[str, str]:
    """The commands' environment: zscir's caches inside the work folder (nothing shared with the user's)."""
    return {**os.environ, "ZSCIR_CACHE_DIR": str(work / "cache")}


def _run(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=RUN_TIMEOUT, env=env)
    return time.perf_counter() - start


def _kill_at_progress(cmd: list[str], reached, extra: float, env: dict[str, str]) -> int | None:
    """Start cmd, SIGKILL it `extra` seconds after `reached()` turns true; its exit code when it ended
    first, else None."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)
    deadline = time.monotonic() + RUN_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline and not reached():
        time.sleep(POLL_SECONDS)
    try:
        return proc.wait(timeout=extra)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the process and any worker it started
        proc.wait()
        return None


def _kill(cmd: list[str], trial: int, rng: np.random.Generator, seconds: float, reached, env) -> int | None:
    """Even trials: a random time in [0, seconds]. Odd trials: a random point of the work itself
    (`reached` is a progress condition drawn by the caller), so kills also land mid-write, not only
    while Python imports."""
    if trial % 2 == 0:
        return _kill_at_progress(cmd, lambda: True, rng.uniform(0, seconds), env)
    return _kill_at_progress(cmd, reached, rng.uniform(0, EXTRA_SECONDS), env)


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


# --- fixtures a trial needs (built once per work folder) --------------------------------------------------
def make_tiny_checkpoint(work: Path) -> tuple[Path, Path]:
    """zscir-tiny weights (seeded) and a seeded LinCIR phi checkpoint naming them."""
    import torch
    from safetensors.torch import save_file

    from zscir_train.backbone import load_backbone
    from zscir_train.checkpoint import meta_for, save_phi_checkpoint
    from zscir_train.phi import build_phi

    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        backbone = load_backbone("zscir-tiny")
        phi = build_phi("lincir", backbone.embed_dim, backbone.width).eval()
    weights = work / "zscir-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, str(weights))
    meta = meta_for(phi, backbone, "lincir")
    meta.backbone_pretrained = str(weights)
    return weights, save_phi_checkpoint(work / "lincir.safetensors", phi, meta)


def write_image(path: Path, index: int, size: tuple[int, int]) -> Path:
    """A small image whose content depends on index (so features differ), in its suffix's format."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(index).integers(0, 256, (size[1] // 4, size[0] // 4, 3), dtype=np.uint8)
    Image.fromarray(pixels).resize(size, Image.Resampling.NEAREST).save(path)
    return path


def make_images(folder: Path, n: int = N_IMAGES) -> Path:
    for i in range(n):
        write_image(folder / f"d{i % 3}" / f"img {i:03d} é.png", i, size=(20 + i % 13, 24))
    (folder / "d0" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


def make_corpus(work: Path) -> Path:
    from zscir_train.world.generate import WorldConfig, generate_world

    world = work / "world"
    if not (world / "world.json").is_file():
        generate_world(WorldConfig(**CORPUS_WORLD), world)
    return world / "corpus" / "captions.txt"


# --- zscir-export ---------------------------------------------------------------------------------------
def bundle_state(bundle: Path, previous: dict[str, str] | None) -> str:
    """'previous' (byte-identical to before), 'new' (complete, every sha256 checks), or a failure."""
    from zscir_infer.bundle import load_bundle

    if not bundle.exists():
        return "missing"
    digest = _tree_digest(bundle)
    if previous is not None and digest == previous:
        return "previous"
    try:
        load_bundle(bundle).verify_all(rehash=True)
    except Exception as exc:  # any damage is a failure of the trial, reported with its message
        return f"broken: {type(exc).__name__}: {exc}"
    return "new"


def export_trials(work: Path, kills: int, rng: np.random.Generator) -> Outcome:
    from zscir_infer.atomic import recover_directory

    _, ckpt = make_tiny_checkpoint(work)
    out = Outcome("zscir-export --ckpt C --out B --force [--fp16]")
    bundle = work / "bundle"
    cmd = _python("zscir_export.cli", "--ckpt", str(ckpt), "--out", str(bundle), "--force", "--quiet")
    env = _env(work)
    out.seconds_uninterrupted = _run([*cmd, "--fp16"], env)
    for trial in range(kills * MAX_TRIALS_PER_KILL):
        if out.kills == kills:
            break
        previous = _tree_digest(bundle)
        files = int(rng.integers(1, EXPORT_FILES))
        written = lambda files=files: any(len(list(t.rglob("*"))) >= files  # noqa: E731
                                          for t in bundle.parent.glob(f".{bundle.name}.*.tmp"))
        code = _kill([*cmd, "--fp16"] if trial % 4 < 2 else cmd, trial, rng, out.seconds_uninterrupted, written, env)
        out.kills += code is None
        state = bundle_state(bundle, previous)
        if state == "missing" and recover_directory(bundle):  # killed between its two renames
            state = "set aside, restored: " + bundle_state(bundle, previous)
        out.saw(state if code is None else f"finished ({code})")
        if "broken" in state or state == "missing":
            out.failures.append(f"trial {trial}: {state}")
    _run([*cmd, "--fp16"], env)
    final = bundle_state(bundle, None)
    if final != "new":
        out.failures.append(f"after the re-run: {final}")
    leftovers = [p.name for p in bundle.parent.iterdir() if p.name.startswith(f".{bundle.name}.")]
    if leftovers:
        out.failures.append(f"temporary folders left after a completed export: {leftovers}")
    return out


# --- zscir-infer index ----------------------------------------------------------------------------------
def _gallery_items(root: Path) -> list[tuple[str, str]]:
    from zscir_infer.gallery import Gallery

    with Gallery.open(root) as g:
        return [(it.name, it.path) for it in g.all_items()]


def _embed_dim(bundle: Path) -> int:
    return int(json.loads((bundle / "manifest.json").read_text())["embed_dim"])


def index_trials(work: Path, kills: int, rng: np.random.Generator) -> Outcome:
    from zscir_infer.gallery import Gallery
    from zscir_infer.stores.faiss_sqlite import FEATURES

    bundle, env = work / "bundle", _env(work)
    if not bundle.exists():
        _, ckpt = make_tiny_checkpoint(work)
        _run(_python("zscir_export.cli", "--ckpt", str(ckpt), "--out", str(bundle), "--quiet"), env)
    images = make_images(work / "images")
    out = Outcome("zscir-infer index SRC --bundle B --out G")

    def cmd(gallery: Path) -> list[str]:
        return _python("zscir_infer.cli", "index", str(images), "--bundle", str(bundle), "--out", str(gallery),
                       "--batch-size", "4", "--workers", "2")

    clean = work / "gallery-clean"
    out.seconds_uninterrupted = _run(cmd(clean), env)
    killed = work / "gallery-killed"
    row_bytes = 4 * _embed_dim(bundle)
    for trial in range(kills * MAX_TRIALS_PER_KILL):
        if out.kills == kills:
            break
        if killed.exists() and len(_gallery_items(killed)) == N_IMAGES:  # done: start over, so the kill lands mid-run
            shutil.rmtree(killed)
        rows = int(rng.integers(1, N_IMAGES))
        stored = lambda rows=rows: (killed / FEATURES).exists() and (killed / FEATURES).stat().st_size >= rows * row_bytes  # noqa: E731
        code = _kill(cmd(killed), trial, rng, out.seconds_uninterrupted, stored, env)
        out.kills += code is None
        if code is not None:
            out.saw(f"finished ({code})")
            continue
        if not killed.exists():
            out.saw("not created yet")
            continue
        try:
            items = _gallery_items(killed)
        except Exception as exc:
            out.failures.append(f"trial {trial}: the gallery does not open: {type(exc).__name__}: {exc}")
            continue
        names = [name for name, _ in items]
        if len(names) != len(set(names)):
            out.failures.append(f"trial {trial}: duplicate entries after the kill")
        out.saw(f"{'all' if len(items) == N_IMAGES else 'part'} of the images committed, no duplicate")
    _run(cmd(killed), env)
    with Gallery.open(clean) as a, Gallery.open(killed) as b:
        got, want = b.all_items(), a.all_items()
        if sorted((it.name, it.path) for it in got) != sorted((it.name, it.path) for it in want):
            out.failures.append("the resumed gallery's entries differ from an uninterrupted run's")
        elif len(got) != N_IMAGES:
            out.failures.append(f"the resumed gallery holds {len(got)} of {N_IMAGES} images")
        else:
            order = [{it.name: it.id for it in got}[it.name] for it in want]
            if not np.allclose(b.features()[order], a.features(), atol=FEATURE_TOLERANCE):
                out.failures.append("the resumed gallery's features differ from an uninterrupted run's")
        if not (b.index_is_fresh() and b.index.ntotal == N_IMAGES):
            out.failures.append("the resumed gallery's index is stale")
    return out


# --- zscir-train lincir ---------------------------------------------------------------------------------
def train_state(run: Path, artifact: Path) -> str:
    import torch

    from zscir_train.checkpoint import load_phi_checkpoint
    from zscir_train.training.loop import STATE_FILE

    state = run / STATE_FILE
    saved = torch.load(state, map_location="cpu", weights_only=True) if state.exists() else None  # raises if partial
    if artifact.exists():
        load_phi_checkpoint(artifact)
        return "finished artifact"
    return f"resumable at step {saved['step']}" if saved is not None else "no state yet"


def _weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def train_trials(work: Path, kills: int, rng: np.random.Generator) -> Outcome:
    from zscir_train.training.loop import STATE_FILE

    weights, _ = make_tiny_checkpoint(work)
    corpus, env = make_corpus(work), _env(work)

    def cmd(name: str, resume: bool) -> list[str]:
        return _python("zscir_train.cli", "lincir", "--captions", str(corpus), "--model", "zscir-tiny",
                       "--pretrained", str(weights), "--out", str(work / f"{name}.safetensors"),
                       "--run-dir", str(work / f"{name}-run"), "--steps", str(TRAIN_STEPS),
                       "--checkpoint-every", str(TRAIN_CHECKPOINT_EVERY), "--batch-size", "16", "--threads", "1", "--log-every", "1",
                       "--no-progress", *(["--resume"] if resume else []))

    out = Outcome(f"zscir-train lincir --steps {TRAIN_STEPS} --checkpoint-every {TRAIN_CHECKPOINT_EVERY} [--resume]")
    out.seconds_uninterrupted = _run(cmd("straight", False), env)
    run, artifact = work / "killed-run", work / "killed.safetensors"
    for trial in range(kills * MAX_TRIALS_PER_KILL):
        if out.kills == kills:
            break
        if artifact.exists():  # the run completed: start it again, so every kill lands in a run
            artifact.unlink()
            shutil.rmtree(run)
        steps = int(rng.integers(1, TRAIN_STEPS))
        trained = lambda steps=steps: (run / "log.jsonl").exists() and (run / "log.jsonl").read_text().count('"train"') >= steps  # noqa: E731
        code = _kill(cmd("killed", (run / STATE_FILE).exists()), trial, rng, out.seconds_uninterrupted, trained, env)
        out.kills += code is None
        try:
            out.saw(train_state(run, artifact) if code is None else f"finished ({code})")
        except Exception as exc:
            out.failures.append(f"trial {trial}: {type(exc).__name__}: {exc}")
    if not artifact.exists():
        _run(cmd("killed", (run / STATE_FILE).exists()), env)
    a, b = _weights(work / "straight.safetensors"), _weights(artifact)
    diff = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
    if set(a) != set(b) or diff > RESUME_TOLERANCE:
        out.failures.append(f"resumed weights differ from an uninterrupted run by {diff:.3g}")
    return out


TRIALS = {"index": index_trials, "export": export_trials, "train": train_trials}


def run_harness(work: Path, kills: int, commands: tuple[str, ...] = tuple(TRIALS), seed: int = SEED) -> list[Outcome]:
    rng = np.random.default_rng(seed)
    results = []
    for name in commands:
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        results.append(TRIALS[name](folder, kills, rng))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs per command")
    parser.add_argument("--commands", default=",".join(TRIALS), help="comma-separated: index,export,train")
    parser.add_argument("--out", type=Path, help="write the outcome as JSON here")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zscir-crash-") as work:
        outcomes = run_harness(Path(work), args.kills, tuple(args.commands.split(",")), args.seed)
    report = {"kills_per_command": args.kills, "seed": args.seed, "seconds": round(time.perf_counter() - started, 1),
              "commands": [o.to_dict() for o in outcomes]}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        from zscir_infer.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    sys.exit(1 if any(o.failures for o in outcomes) else 0)


if __name__ == "__main__":
    main()
