"""Throughput under a fixed background load (issue 18): LinCIR training and ONNX Runtime encoding, idle and
with every core busy, per thread count and wait policy.

Two kinds of background load, N processes each (N = usable cores), started before a figure and killed
after it (also when the measurement raises; a load process whose parent dies stops by itself):
- `python`: a pure-Python `while True` loop per process: exactly one runnable thread per core, no thread
  pool, no yielding. The cleanest "one busy process per core".
- `threaded`: a float64 192x192 numpy matmul loop per process with OpenBLAS's pool at N threads: like a
  neighbour that has a thread pool of its own which spin-waits between calls (another training run, a
  test suite), so N x N busy threads. Added because in the first probes the pure-Python load did not
  reproduce the issue's 15-35x collapse and such neighbours did.

Configurations, each in a fresh process (OpenMP reads OMP_WAIT_POLICY / GOMP_SPINCOUNT once, when torch
loads it; ONNX Runtime's options are per session):
- training: one step of `zscir-train lincir`'s loop (batch read from the masked corpus, loss, backward,
  AdamW, schedule) on the shapes world (world-clip with the committed weights, world captions masked by
  the real masking code, global batch 128 as in the world recipes) at torch threads = cores, cores - 1, 1, with libgomp's default wait (spin ~300k iterations before sleeping),
  OMP_WAIT_POLICY=PASSIVE (sleep at once) or a short spin (GOMP_SPINCOUNT); and once with
  `torch.set_num_interop_threads(1)`;
- encoding: `zscir_infer.Runtime` (ONNX Runtime fp32) at intra-op threads = cores or 1, with
  `session.intra_op.allow_spinning` 0 or 1 (one thread: no pool, nothing spins): image encoder at batch 8
  (images/s) and the composed query's encoders at batch 8 (image encoder then query encoder: queries/s).

Each worker measures idle, then loaded, per load kind and round (an idle figure right before each loaded
one), and records per figure the CPU used by itself, by the load and by every other process (cores), and
the 1-minute load average.

    python -m zscir_bench.load REQUEST.json RESULT.json      (the worker; `zscir-bench load` runs it)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

from zscir_bench.machine import cpu_ticks
from zscir_bench.timing import Policy, measure
from zscir_bench.worker import progress_to_stderr, run_worker, serve

IDLE = "idle"
LOAD_CODE = {
    "python": (
        "import os\n"
        "parent = os.getppid()\n"
        "print('ready', flush=True)\n"
        "while os.getppid() == parent:\n"
        "    for _ in range(100_000):\n"
        "        pass\n"
    ),
    "threaded": (
        "import os\n"
        "import numpy as np\n"
        "parent = os.getppid()\n"
        "a = np.random.default_rng(0).random((192, 192))\n"
        "a @ a\n"
        "print('ready', flush=True)\n"
        "while os.getppid() == parent:\n"
        "    for _ in range(20):\n"
        "        a @ a\n"
    ),
}
LOAD_DESCRIPTIONS = {
    "python": "one pure-Python `while True` process per core (1 runnable thread each, no pool)",
    "threaded": "one numpy float64 192x192 matmul-loop process per core, OpenBLAS at N threads (a neighbour "
                "with its own spin-waiting thread pool)",
}
LOADS = tuple(LOAD_CODE)
READY = "ready"
RAMP_S = 0.3  # after every load process said it runs: let the scheduler spread them
STOP_TIMEOUT_S = 10

# libgomp (torch's OpenMP on Linux x86): unset = spin 300,000 iterations, then sleep; PASSIVE = sleep at
# once; GOMP_SPINCOUNT = spin this many iterations. Every configuration sets all of its own variables and
# clears the others, so a user's environment does not leak into a configuration.
WAIT_ENV: dict[str, dict[str, str]] = {
    "spin": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "short-spin": {"GOMP_SPINCOUNT": "10000"},
}
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
WAIT_LABEL = {"spin": "OMP default (spin)", "passive": "OMP PASSIVE", "short-spin": "GOMP_SPINCOUNT=10000"}
ONE_THREAD = "n/a"  # wait policy / spinning of a 1-thread configuration: no pool, nothing waits

TRAIN_MODEL, TRAIN_BATCH = "world-clip", 128
TRAIN_CAPTIONS = 512  # world captions masked once (cached in the work folder); the batch is the first 128
ENCODE_BATCH = 8
TRAIN_POLICY = Policy(warmup=1, min_reps=3, min_seconds=2.5, max_reps=100)
ENCODE_POLICY = Policy(warmup=1, min_reps=3, min_seconds=1.5, max_reps=5000)
ROUNDS = 2
WORKER_TIMEOUT_S = 600
ERROR_LINES = 5


# --- background load -------------------------------------------------------------------------------------
class BackgroundLoad:
    """`n` busy processes of one kind while the `with` block runs; all killed on exit, whatever happened.

    The processes are started one by one; if one fails to start, the ones already running are killed
    before the error propagates. Each also stops by itself once its parent is gone (killed by a timeout)."""

    def __init__(self, n: int, kind: str = "python", env: dict[str, str] | None = None):
        if kind not in LOAD_CODE:
            raise ValueError(f"Unknown load {kind!r}: use one of {', '.join(LOAD_CODE)}.")
        if n < 1:
            raise ValueError(f"A background load needs at least 1 process, got {n}.")
        self.n, self.kind = n, kind
        self.env = {**os.environ, "OPENBLAS_NUM_THREADS": str(n), "OMP_NUM_THREADS": str(n), **(env or {})}
        self.processes: list[subprocess.Popen] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def start(self) -> BackgroundLoad:
        try:
            for _ in range(self.n):
                process = subprocess.Popen([sys.executable, "-c", LOAD_CODE[self.kind]], stdin=subprocess.DEVNULL,
                                           stdout=subprocess.PIPE, text=True, env=self.env)
                self.processes.append(process)
            for process in self.processes:
                line = process.stdout.readline()
                if line.strip() != READY:
                    raise RuntimeError(f"A {self.kind} load process exited before running (code {process.poll()}).")
            time.sleep(RAMP_S)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait(STOP_TIMEOUT_S)
            process.stdout.close()
        self.processes = []

    def __enter__(self) -> BackgroundLoad:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- CPU accounting --------------------------------------------------------------------------------------
def _ticks(pid: int | str) -> int | None:
    """utime + stime of a process, all its threads (clock ticks); None when it is gone or off Linux."""
    found = cpu_ticks(str(pid))
    return None if found is None else found[1]


def _system_busy_ticks() -> int | None:
    """Ticks all CPUs spent running something (user, nice, system, irq, softirq) since boot."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in first[1:8])
    return user + nice + system + irq + softirq


class CpuMeter:
    """Cores used over a window by this process, by the load processes, and by every other process."""

    def __init__(self, load_pids: Sequence[int] = ()):
        self.load_pids = list(load_pids)
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.t0 = time.perf_counter()
        self.before = self._snapshot()

    def _snapshot(self) -> tuple[int | None, int | None, int | None]:
        load = [_ticks(p) for p in self.load_pids]
        return _system_busy_ticks(), _ticks("self"), None if None in load else sum(load)

    def stop(self) -> dict:
        after = self._snapshot()
        wall = time.perf_counter() - self.t0
        if any(x is None for x in (*self.before[:2], *after[:2])) or wall <= 0:
            return {"wall_s": wall, "self_cores": None, "load_cores": None, "others_cores": None}
        cores = [(b - a) / self.hz / wall if a is not None and b is not None else None
                 for a, b in zip(self.before, after, strict=True)]
        system, own, load = cores
        if not self.load_pids:
            load = 0.0
        others = None if load is None else max(0.0, system - own - load)
        return {"wall_s": wall, "self_cores": own, "load_cores": load, "others_cores": others}


# --- configurations --------------------------------------------------------------------------------------
def _distinct(values: Sequence[int]) -> list[int]:
    return list(dict.fromkeys(v for v in values if v >= 1))


def training_configs(cores: int) -> list[dict]:
    """torch threads = cores, cores - 1, 1 (distinct) x wait policy; 1 thread has no OpenMP team, so one
    configuration; plus cores threads, PASSIVE, with one inter-op thread."""
    out = []
    for threads in _distinct([cores, cores - 1, 1]):
        for wait in WAIT_ENV if threads > 1 else (ONE_THREAD,):
            out.append(_train_config(threads, wait))
    if cores > 1:
        out.append(_train_config(cores, "passive", interop=1))
    return out


def _train_config(threads: int, wait: str, interop: int | None = None) -> dict:
    label = f"{threads} thread{'s' * (threads > 1)}" + (f", {WAIT_LABEL[wait]}" if wait != ONE_THREAD else "")
    if interop is not None:
        label += f", {interop} inter-op thread"
    return {"workload": "train", "name": label, "threads": threads, "wait": wait, "interop": interop,
            "env": dict(WAIT_ENV.get(wait, {}))}


def encoding_configs(cores: int) -> list[dict]:
    """intra-op threads = cores, 1 (distinct) x allow_spinning 0/1; one thread has no pool to spin."""
    out = []
    for threads in _distinct([cores, 1]):
        for spinning in ("0", "1") if threads > 1 else (ONE_THREAD,):
            label = f"{threads} thread{'s' * (threads > 1)}" + (f", spinning {spinning}" if spinning != ONE_THREAD else "")
            out.append({"workload": "encode", "name": label, "threads": threads, "spinning": spinning, "env": {}})
    return out


def config_env(config: dict, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a configuration's worker runs in: the wait variables cleared, then its own set."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in WAIT_VARS}
    return {**env, **config.get("env", {})}


def shipped_defaults(cores: int) -> dict:
    """What zscir runs with when nothing is given: zscir-train (torch's default threads = cores, the wait
    policy its entry point sets) and the runtime (intra-op threads, allow_spinning)."""
    from zscir_infer.backends import ort as ort_backend
    from zscir_train import cli as train_cli

    wait_env = {k: v for k, v in train_cli.THREAD_ENV.items() if k in WAIT_VARS}
    wait = next((w for w, e in WAIT_ENV.items() if e == wait_env), None)
    threads = ort_backend.default_intra_op_threads()
    return {"train": {"threads": cores, "wait": wait, "interop": None},
            "encode": {"threads": threads, "spinning": ort_backend.ORT_SPIN if threads > 1 else ONE_THREAD}}


def is_default(config: dict, defaults: dict) -> bool:
    d = defaults[config["workload"]]
    if config["workload"] == "train":
        wait = d["wait"] if config["threads"] > 1 else ONE_THREAD
        return (config["threads"], config["wait"], config["interop"]) == (d["threads"], wait, d["interop"])
    return (config["threads"], config["spinning"]) == (d["threads"], d["spinning"])


# --- the worker ------------------------------------------------------------------------------------------
def world_captions(n: int, seed: int = 0) -> list[str]:
    """Captions as `zscir-train world` writes its corpus (random attribute combinations, same grammar)."""
    import numpy as np

    from zscir_train.world.attributes import all_specs
    from zscir_train.world.captions import random_caption

    rng = np.random.default_rng(seed)
    specs = all_specs()
    return [random_caption(rng, specs[int(i)])[0] for i in rng.integers(len(specs), size=n)]


def _train_calls(request: dict) -> tuple[dict[str, tuple[Callable, int]], dict]:
    import torch

    config = request["config"]
    torch.set_num_threads(config["threads"])
    if config.get("interop"):
        torch.set_num_interop_threads(config["interop"])
    from zscir_bench.train_cost import TrainStep, _items
    from zscir_train.training.lincir import LinCIRConfig, lincir_task
    from zscir_train.training.loop import Dist

    work = Path(request["work"])
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"world-captions-{TRAIN_CAPTIONS}.txt"
    if not corpus.is_file():
        from zscir_infer.atomic import atomic_write_text

        atomic_write_text(corpus, "\n".join(world_captions(TRAIN_CAPTIONS)) + "\n")
    model, batch_size = request["train_model"], request["train_batch"]
    pretrained = None
    if model == "world-clip":
        from zscir_train.world import world_clip_path

        pretrained = str(world_clip_path())
    cfg = LinCIRConfig(model=model, pretrained=pretrained, batch_size=batch_size, lr=1e-3, captions=[str(corpus)],
                       cache_dir=str(work / "masking-cache"), progress=False)
    task = lincir_task(cfg, Dist())
    items = _items(batch_size, len(task.dataset))
    step = TrainStep(task, cfg, "fp32")

    def loop_step() -> float:  # what the loop does per step with --num-workers 0: read the batch, then step
        return step(task.dataset.__getitems__(items))

    loop_step()
    info = {"torch_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "model": model, "batch": batch_size,
            "omp_env": {k: os.environ[k] for k in WAIT_VARS if k in os.environ}}
    return {"lincir_step": (loop_step, batch_size)}, info


def _encode_calls(request: dict) -> tuple[dict[str, tuple[Callable, int]], dict]:
    import numpy as np

    from zscir_bench import samples
    from zscir_infer.backends import ort as ort_backend
    from zscir_infer.contract import IMAGE_FEATURES, PHI, QUERY_ENCODER, TOKEN_IDS, fill_template
    from zscir_infer.runtime import Runtime

    config = request["config"]
    if config["spinning"] != ONE_THREAD:
        ort_backend.ORT_SPIN = config["spinning"]  # read when a session is created
    batch = request.get("encode_batch", ENCODE_BATCH)
    rt = Runtime(Path(request["bundle"]), "ort", "cpu", "fp32", batch_size=batch, threads=config["threads"])
    rng = np.random.default_rng(0)
    pixels = rt.preprocess([samples.photo(rng) for _ in range(batch)])
    texts = samples.modification_texts(batch)
    if rt.default_method == PHI:
        texts = [fill_template(rt.template(), t, rt.placeholder) for t in texts]
    ids = rt.token_ids(texts)

    def composed() -> np.ndarray:
        features = rt.image_features(pixels)
        return rt.run_graph(QUERY_ENCODER, {IMAGE_FEATURES: features, TOKEN_IDS: ids})

    composed()  # opens both sessions
    info = {"intra_op_threads": config["threads"], "allow_spinning": ort_backend.ORT_SPIN, "batch": batch,
            "bundle": Path(request["bundle"]).name}
    return {"image_encode": (lambda: rt.image_features(pixels), batch), "composed_query": (composed, batch)}, info


def measure_worker(request: dict, say: Callable[[str], None] = lambda _: None) -> dict:
    """Set up the configuration's workload, then per round and load kind: an idle figure, a loaded one."""
    t0 = time.perf_counter()
    calls, info = (_train_calls if request["config"]["workload"] == "train" else _encode_calls)(request)
    setup_s = time.perf_counter() - t0
    policy = Policy(**request["policy"])
    cores = request["cores"]
    figures = []
    conditions = [c for kind in request["loads"] for c in (IDLE, kind)] or [IDLE]
    for round_index in range(request["rounds"]):
        for condition in conditions:
            context = nullcontext() if condition == IDLE else BackgroundLoad(cores, condition)
            with context as load:
                for workload, (fn, batch) in calls.items():
                    say(f"{request['config']['name']}: {workload}, {condition}, round {round_index + 1}")
                    meter = CpuMeter(load.pids if load else ())
                    stats = measure(fn, batch, policy)
                    cpu = meter.stop()
                    figures.append({"workload": workload, "condition": condition, "round": round_index,
                                    "stats": stats.to_dict(), "cpu": cpu, "loadavg_1m": os.getloadavg()[0]})
    return {"setup_s": setup_s, "info": info, "figures": figures}


# --- the run ---------------------------------------------------------------------------------------------
def run_load(cores: int, bundles: dict[str, Path], loads: Sequence[str] = LOADS, rounds: int = ROUNDS,
             train_policy: Policy = TRAIN_POLICY, encode_policy: Policy = ENCODE_POLICY, work: Path | None = None,
             train_model: str = TRAIN_MODEL, train_batch: int = TRAIN_BATCH, train: bool = True,
             configs: Sequence[dict] | None = None, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Every configuration in a worker of its own; the figures, the summary tables and the defaults."""
    work = work or Path(tempfile.mkdtemp(prefix="zscir-load-"))
    work.mkdir(parents=True, exist_ok=True)
    if configs is None:
        configs = (training_configs(cores) if train else []) + (encoding_configs(cores) if bundles else [])
    jobs = []
    for config in configs:
        if config["workload"] == "train":
            jobs.append((config, None))
        else:
            jobs += [(config, name) for name in bundles]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (config, bundle) in enumerate(jobs):
            policy = train_policy if config["workload"] == "train" else encode_policy
            request = {"config": config, "cores": cores, "loads": list(loads), "rounds": rounds,
                       "policy": asdict(policy), "work": str(work / "train"), "train_model": train_model,
                       "train_batch": train_batch, "bundle": str(bundles[bundle]) if bundle else None}
            progress(f"[{index + 1}/{len(jobs)}] {config['workload']} {bundle or train_model}: {config['name']}")
            t0 = time.perf_counter()
            result, error = run_worker("zscir_bench.load", request, Path(tmp), f"job{index}", progress,
                                       env=config_env(config), timeout_s=WORKER_TIMEOUT_S)
            runs.append({"config": config, "bundle": bundle, "wall_s": time.perf_counter() - t0, "error": error,
                         **(result or {"setup_s": None, "info": {}, "figures": []})})
    defaults = shipped_defaults(cores)
    return {"cores": cores, "loads": {k: LOAD_DESCRIPTIONS[k] for k in loads}, "rounds": rounds,
            "policies": {"train": asdict(train_policy), "encode": asdict(encode_policy)},
            "train": {"model": train_model, "batch": train_batch, "captions": TRAIN_CAPTIONS},
            "bundles": {name: Path(path).name for name, path in bundles.items()}, "defaults": defaults,
            "runs": runs, "tables": summarize(runs, list(loads), defaults)}


# --- summary ---------------------------------------------------------------------------------------------
def workload_key(run: dict, workload: str) -> str:
    if run["config"]["workload"] == "train":
        return f"LinCIR training step ({run['info'].get('model', TRAIN_MODEL)}, batch {run['info'].get('batch', '?')})"
    title = {"image_encode": "image encoder", "composed_query": "composed query (image + query encoder)"}[workload]
    return f"{title}, ORT fp32, {run['bundle']}, batch {run['info'].get('batch', ENCODE_BATCH)}"


UNITS = {"lincir_step": "samples/s", "image_encode": "images/s", "composed_query": "queries/s"}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(runs: list[dict], loads: list[str], defaults: dict) -> dict[str, dict]:
    """{workload: {"unit", "rows": [{config, idle, loaded{kind}, ratio{kind}, others_cores_max, default}]}}:
    medians over rounds of items/s; ratio = loaded / idle median."""
    tables: dict[str, dict] = {}
    for run in runs:
        workloads = dict.fromkeys(f["workload"] for f in run["figures"])
        for workload in workloads:
            mine = [f for f in run["figures"] if f["workload"] == workload]
            per = {c: [f["stats"]["items_per_s"] for f in mine if f["condition"] == c] for c in (IDLE, *loads)}
            idle = _median(per[IDLE])
            loaded = {k: _median(per[k]) for k in loads}
            others = [f["cpu"]["others_cores"] for f in mine if f["cpu"].get("others_cores") is not None]
            load_cores = {k: _median([f["cpu"]["load_cores"] for f in mine if f["condition"] == k
                                      and f["cpu"].get("load_cores") is not None]) for k in loads}
            row = {"config": run["config"]["name"], "idle": idle, "loaded": loaded,
                   "ratio": {k: (v / idle if v is not None and idle else None) for k, v in loaded.items()},
                   "load_cores": load_cores, "others_cores_max": max(others) if others else None,
                   "default": is_default(run["config"], defaults), "n_idle": len(per[IDLE])}
            table = tables.setdefault(workload_key(run, workload), {"unit": UNITS[workload], "rows": []})
            table["rows"].append(row)
        if run["error"]:
            key = f"{run['config']['workload']} {run['bundle'] or ''}".strip()
            tables.setdefault(f"failed: {key}", {"unit": "", "rows": []})["rows"].append(
                {"config": run["config"]["name"], "error": run["error"]})
    return tables


# --- report ----------------------------------------------------------------------------------------------
DECISION = [
    "Training: `zscir-train` sets `OMP_WAIT_POLICY=PASSIVE` before a command imports torch (unless the "
    "environment sets it; `GOMP_SPINCOUNT` overrides it too) and keeps torch's threads = cores. libgomp's "
    "default spins ~300,000 iterations (a few ms) at every barrier before sleeping: with other busy "
    "processes on the cores, the spinning thread takes the time slice of the very thread it waits for, "
    "once per parallel region, and a world step has thousands of small ones. PASSIVE sleeps at once. A "
    "short spin (GOMP_SPINCOUNT=10000, libgomp only) lands between the two under load; one thread keeps "
    "the best loaded/idle ratio but is about a third slower idle; one inter-op thread brings nothing "
    "measurable (the step has no inter-op work).",
    "Encoding: unchanged: intra-op threads = cores and `allow_spinning` 0, the runtime's defaults, best or "
    "tied in every column. Spinning on halves the world composed query even idle (two sessions in turn: the "
    "waiting one's threads spin on the cores the working one needs); one thread is slower idle and not "
    "faster under load.",
]


OTHERS_DISTURBED = 0.3  # cores used by other processes during a figure above which it counts as disturbed


def others_shared(report: dict) -> bool:
    """Whether processes other than the benchmark's own (worker, background load) used the cores: busy at
    the start or the end, or above OTHERS_DISTURBED during a figure. The load average cannot say: it
    counts the benchmark's own background load."""
    load = report["load"]
    if load["start"]["busy_processes"] or load["end"]["busy_processes"]:
        return True
    others = [f["cpu"]["others_cores"] for run in report["runs"] for f in run["figures"]
              if f["cpu"].get("others_cores") is not None]
    return bool(others) and max(others) > OTHERS_DISTURBED


def load_md(report: dict) -> str:
    from zscir_bench.report import _f, _table, machine_md

    loads = list(report["loads"])
    lines = [
        "# Throughput under background load: idle vs every core busy", "",
        f"Created {report['created']} by `{report['command']}`.", "",
        "Background loads (N = usable cores = " f"{report['cores']}; started before a figure, killed after it):", "",
        *[f"- `{k}`: {v}" for k, v in report["loads"].items()], "",
        f"Each configuration runs in a fresh process; per round and load kind it measures an idle figure, then "
        f"the same with the load running ({report['rounds']} round(s)). Figures are medians over rounds of "
        f"items/s (training: {report['policies']['train']['min_reps']}+ steps and "
        f"{report['policies']['train']['min_seconds']} s per figure; encoding: "
        f"{report['policies']['encode']['min_reps']}+ calls and {report['policies']['encode']['min_seconds']} s). "
        "Training is one step of `zscir-train lincir`'s loop (batch read from the masked world captions, loss, "
        "backward, AdamW) "
        f"({report['train']['model']}, batch {report['train']['batch']}); encoding is `zscir_infer.Runtime` "
        "(ONNX Runtime fp32) on bundles with random weights "
        f"({', '.join(report['bundles'].values()) or 'none'}). **(default)** marks what zscir runs with when "
        "nothing is set. `others` is the most CPU any other process (not the worker, not the load) used "
        f"during one of the row's figures, in cores: above {OTHERS_DISTURBED} the row was disturbed. The load "
        "averages below include this benchmark's own background load.", "",
        *machine_md(report),
    ]
    for key, table in report["tables"].items():
        if key.startswith("failed"):
            lines += [f"## {key}", "", *_table(["config", "error"], [[r["config"], r["error"]] for r in table["rows"]])]
            continue
        header = ["config", f"idle {table['unit']}"]
        for k in loads:
            header += [f"{k} load {table['unit']}", f"{k}/idle"]
        header += ["others (cores)"]
        rows = []
        for r in table["rows"]:
            row = [r["config"] + (" **(default)**" if r["default"] else ""), r["idle"]]
            for k in loads:
                ratio = r["ratio"][k]
                row += [r["loaded"][k], None if ratio is None else f"{ratio:.2f}"]
            rows.append([*row, None if r["others_cores_max"] is None else f"{r['others_cores_max']:.2f}"])
        lines += [f"## {key}", "", *_table(header, rows)]
    lines += ["## Defaults", "", *defaults_md(report, _f), "", *[f"- {d}" for d in DECISION], "",
              "## Plot", "", "![throughput idle vs loaded](load.png)", ""]
    return "\n".join(lines)


def defaults_md(report: dict, fmt: Callable = str) -> list[str]:
    """Per table: the default row against the best row idle and under each load."""
    out = []
    for key, table in report["tables"].items():
        rows = [r for r in table["rows"] if "idle" in r]
        default = next((r for r in rows if r["default"]), None)
        if default is None or default["idle"] is None:
            continue
        parts = [f"idle {fmt(default['idle'])} {table['unit']} (best {fmt(max(r['idle'] or 0 for r in rows))})"]
        for kind in default["loaded"]:
            best = max((r["loaded"][kind] or 0 for r in rows), default=0)
            if default["loaded"][kind] is not None:
                parts.append(f"{kind} load {fmt(default['loaded'][kind])} (best {fmt(best)})")
        out.append(f"- {key}: default `{default['config']}`: " + ", ".join(parts))
    return out


def load_plot(report: dict, path: Path) -> Path:
    """Grouped bars per table: idle and each load per configuration."""
    from zscir_bench.plots import _save, plt

    tables = {k: t for k, t in report["tables"].items() if not k.startswith("failed") and t["rows"]}
    loads = list(report["loads"])
    fig, axes = plt.subplots(len(tables) or 1, 1, figsize=(10, 0.5 + 0.75 * sum(len(t["rows"]) for t in tables.values())
                                                           + 0.9 * len(tables)), squeeze=False)
    width = 0.8 / (1 + len(loads))
    for ax, (key, table) in zip(axes[:, 0], tables.items(), strict=False):
        names = [r["config"] + (" (default)" if r["default"] else "") for r in table["rows"]]
        for i, condition in enumerate((IDLE, *loads)):
            values = [(r["idle"] if condition == IDLE else r["loaded"][condition]) or 0 for r in table["rows"]]
            ax.barh([y + i * width for y in range(len(names))], values, height=width,
                    label=condition if condition == IDLE else f"{condition} load")
        ax.set_yticks([y + width * len(loads) / 2 for y in range(len(names))], names, fontsize=8)
        ax.set_xlabel(table["unit"])
        ax.set_title(key, fontsize=9)
        ax.invert_yaxis()
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


if __name__ == "__main__":
    serve(sys.argv[1:], lambda request: measure_worker(request, progress_to_stderr))
