"""`zscir-bench load`: the background load really occupies N processes and always goes away, the
configurations are the ones the issue asks for, each worker measures idle and loaded figures, and the
report's medians and ratios are computed from the figures it holds. No speed is asserted."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner
from zscir_bench import load as ld
from zscir_bench.cli import app
from zscir_bench.machine import recorded
from zscir_bench.report import write_report
from zscir_bench.timing import QUICK_POLICY, Policy

runner = CliRunner()
GONE_WAIT_S = 5.0
MIN_LOAD_CORES = 0.5  # two spinning processes over 1 s, on 2 cores shared with whatever else runs
# CPU time is counted in clock ticks (10 ms): a window must last long enough for the load's share to show.
# QUICK_POLICY's two calls of a tiny model last milliseconds, where a spinning load may count 0 ticks.
METERED_POLICY = Policy(warmup=1, min_reps=2, min_seconds=0.5, max_reps=100_000)


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's zombie stays until its new parent reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _wait_gone(pids, timeout=GONE_WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


@pytest.mark.parametrize("kind", ld.LOADS)
def test_the_load_occupies_n_processes_and_is_killed_even_when_the_measurement_raises(kind):
    with pytest.raises(RuntimeError, match="measurement failed"), ld.BackgroundLoad(2, kind) as load:
        pids = load.pids
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        meter = ld.CpuMeter(pids)
        time.sleep(1.0)
        cpu = meter.stop()
        assert cpu["load_cores"] > MIN_LOAD_CORES
        if kind == "threaded":  # OpenBLAS's pool at N threads in each process
            assert all(_threads_of(p) >= 2 for p in pids)
        raise RuntimeError("measurement failed")
    assert load.processes == [] and _wait_gone(pids)


def test_a_load_process_that_fails_to_start_takes_the_others_down(monkeypatch):
    monkeypatch.setitem(ld.LOAD_CODE, "broken", "import sys\nsys.exit(3)\n")
    load = ld.BackgroundLoad(2, "broken")
    with pytest.raises(RuntimeError, match="exited before running"), load:
        pass
    assert load.processes == []


def test_load_processes_stop_by_themselves_when_their_parent_dies():
    script = ("import os, sys\nfrom zscir_bench.load import BackgroundLoad\n"
              "load = BackgroundLoad(2, 'python').start()\nprint(' '.join(map(str, load.pids)), flush=True)\n"
              "os._exit(0)\n")  # no stop(): as if the worker had been killed
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2 and _wait_gone(pids)


def test_an_unknown_load_or_no_process_is_refused():
    with pytest.raises(ValueError, match="Unknown load"):
        ld.BackgroundLoad(2, "gpu")
    with pytest.raises(ValueError, match="at least 1"):
        ld.BackgroundLoad(0)


def test_the_cpu_meter_counts_this_process_and_not_others_as_load():
    meter = ld.CpuMeter()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.5:
        pass
    cpu = meter.stop()
    assert cpu["self_cores"] > 0.5 and cpu["load_cores"] == 0.0 and cpu["others_cores"] >= 0.0


def test_training_configurations_are_cores_cores_minus_one_and_one_by_wait_policy():
    two = ld.training_configs(2)
    assert [(c["threads"], c["wait"], c["interop"]) for c in two] == [
        (2, "spin", None), (2, "passive", None), (2, "short-spin", None), (1, ld.ONE_THREAD, None), (2, "passive", 1)]
    four = ld.training_configs(4)
    assert [c["threads"] for c in four] == [4, 4, 4, 3, 3, 3, 1, 4]
    assert [(c["threads"], c["wait"]) for c in ld.training_configs(1)] == [(1, ld.ONE_THREAD)]
    assert len({c["name"] for c in four}) == len(four)
    assert two[1]["env"] == {"OMP_WAIT_POLICY": "PASSIVE"} and two[0]["env"] == {}


def test_encoding_configurations_are_threads_by_spinning():
    assert [(c["threads"], c["spinning"]) for c in ld.encoding_configs(2)] == [(2, "0"), (2, "1"), (1, ld.ONE_THREAD)]
    assert [(c["threads"], c["spinning"]) for c in ld.encoding_configs(1)] == [(1, ld.ONE_THREAD)]


def test_a_configuration_runs_with_its_own_wait_variables_only():
    base = {"PATH": "/bin", "OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "1"}
    spin, passive = ld.training_configs(2)[:2]
    assert ld.config_env(spin, base) == {"PATH": "/bin"}
    assert ld.config_env(passive, base) == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE"}


def test_exactly_one_configuration_per_workload_is_what_zscir_ships():
    from zscir_infer.backends import ort

    defaults = ld.shipped_defaults(2)
    assert defaults["train"] == {"threads": 2, "wait": "passive", "interop": None}  # zscir_train.cli.THREAD_ENV
    marked = [c for c in ld.training_configs(2) if ld.is_default(c, defaults)]
    assert [(c["threads"], c["wait"], c["interop"]) for c in marked] == [(2, "passive", None)]
    assert defaults["encode"]["threads"] == ort.default_intra_op_threads()
    assert [(c["threads"], c["spinning"]) for c in ld.encoding_configs(2)
            if ld.is_default(c, {**defaults, "encode": {"threads": 2, "spinning": ort.ORT_SPIN}})] == [(2, "0")]


def _figure(workload, condition, items_per_s, others=0.0, load_cores=None):
    return {"workload": workload, "condition": condition, "round": 0, "loadavg_1m": 1.0,
            "stats": {"items_per_s": items_per_s},
            "cpu": {"self_cores": 1.0, "load_cores": 0.0 if condition == "idle" else load_cores,
                    "others_cores": others}}


def _runs() -> list[dict]:
    spin, passive = ld.training_configs(2)[:2]
    train = [
        {"config": spin, "bundle": None, "error": "", "info": {"model": "world-clip", "batch": 128}, "figures": [
            _figure("lincir_step", "idle", 900.0), _figure("lincir_step", "python", 150.0, load_cores=2.0),
            _figure("lincir_step", "idle", 700.0, others=0.4), _figure("lincir_step", "python", 170.0, load_cores=1.8),
            _figure("lincir_step", "idle", 1000.0), _figure("lincir_step", "threaded", 100.0, load_cores=1.9)]},
        {"config": passive, "bundle": None, "error": "", "info": {"model": "world-clip", "batch": 128}, "figures": [
            _figure("lincir_step", "idle", 800.0), _figure("lincir_step", "python", 400.0, load_cores=1.5),
            _figure("lincir_step", "idle", 800.0), _figure("lincir_step", "threaded", 200.0, load_cores=1.5)]},
    ]
    encode = ld.encoding_configs(2)[0]
    failed = {"config": encode, "bundle": "world-clip", "error": "worker exited with code 1: boom", "info": {},
              "figures": [], "setup_s": None}
    return [*train, failed]


def test_medians_and_ratios_come_from_the_figures():
    defaults = {"train": {"threads": 2, "wait": "passive", "interop": None}, "encode": {"threads": 2, "spinning": "0"}}
    tables = ld.summarize(_runs(), ["python", "threaded"], defaults)
    spin, passive = tables["LinCIR training step (world-clip, batch 128)"]["rows"]
    assert spin["idle"] == 900.0 and spin["n_idle"] == 3  # median of 900, 700, 1000 (the mean: 867)
    assert spin["loaded"] == {"python": 160.0, "threaded": 100.0}
    assert spin["ratio"]["python"] == pytest.approx(160 / 900) and spin["ratio"]["threaded"] == pytest.approx(100 / 900)
    assert spin["others_cores_max"] == 0.4 and spin["load_cores"]["python"] == pytest.approx(1.9)
    assert passive["ratio"] == {"python": 0.5, "threaded": 0.25}
    assert (spin["default"], passive["default"]) == (False, True)
    assert tables["failed: encode world-clip"]["rows"][0]["error"].endswith("boom")


def test_only_other_processes_make_a_run_shared_not_its_own_load():
    quiet = {"start": {"busy_processes": []}, "end": {"busy_processes": []}, "loadavg": [4.0, 4.0, 4.0]}
    report = {"load": quiet, "runs": _runs()}  # others at most 0.4 cores during one figure
    assert ld.others_shared(report)
    report["runs"] = _runs()[1:]  # at most 0.0
    assert not ld.others_shared(report)
    busy = {**quiet, "end": {"busy_processes": [{"pid": 1, "name": "pytest", "cpu_percent": 90.0}]}}
    assert ld.others_shared({"load": busy, "runs": report["runs"]})


def test_the_report_has_a_table_per_workload_the_default_marked_and_a_plot(tmp_path):
    defaults = {"train": {"threads": 2, "wait": "passive", "interop": None}, "encode": {"threads": 2, "spinning": "0"}}
    loads = ["python", "threaded"]
    body = {"cores": 2, "loads": {k: ld.LOAD_DESCRIPTIONS[k] for k in loads}, "rounds": 2,
            "policies": {"train": {"min_reps": 3, "min_seconds": 2.5}, "encode": {"min_reps": 3, "min_seconds": 1.5}},
            "train": {"model": "world-clip", "batch": 128, "captions": 512}, "bundles": {"world-clip": "world-clip-lincir"},
            "defaults": defaults, "runs": _runs(), "tables": ld.summarize(_runs(), loads, defaults)}
    report = recorded("load", 2, lambda: body)
    paths = write_report(report, tmp_path)
    assert [p.name for p in paths] == ["load.json", "load.md", "load.png"]
    assert json.loads(paths[0].read_text())["tables"] == body["tables"]
    md = paths[1].read_text()
    assert "## LinCIR training step (world-clip, batch 128)" in md and "## Machine" in md
    assert "| config | idle samples/s | python load samples/s | python/idle | threaded load samples/s | threaded/idle |" in md
    assert "| 2 threads, OMP PASSIVE **(default)** | 800 | 400 | 0.50 | 200 | 0.25 |" in md
    assert "| 2 threads, OMP default (spin) | 900 | 160 | 0.18 | 100 | 0.11 | 0.40 |" in md
    assert "## failed: encode world-clip" in md and "## Defaults" in md
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_encoding_worker_measures_idle_then_loaded_in_its_own_process(tiny_bundle, tmp_path):
    config = ld.encoding_configs(2)[0]
    report = ld.run_load(2, {"tiny": tiny_bundle}, loads=["python"], rounds=1, encode_policy=METERED_POLICY,
                         work=tmp_path, train=False, configs=[config])
    (run,) = report["runs"]
    assert run["error"] == "" and run["info"]["allow_spinning"] == "0" and run["info"]["intra_op_threads"] == 2
    assert [(f["workload"], f["condition"]) for f in run["figures"]] == [
        ("image_encode", "idle"), ("composed_query", "idle"), ("image_encode", "python"), ("composed_query", "python")]
    assert all(f["stats"]["items_per_s"] > 0 and f["stats"]["batch"] == ld.ENCODE_BATCH for f in run["figures"])
    assert all((f["cpu"]["load_cores"] > MIN_LOAD_CORES) == (f["condition"] == "python") for f in run["figures"])
    assert set(report["tables"]) == {f"{t}, ORT fp32, tiny, batch 8" for t in (
        "image encoder", "composed query (image + query encoder)")}


def test_a_training_worker_times_real_lincir_steps(tmp_path):
    request = {"config": ld.training_configs(2)[0], "cores": 2, "loads": [], "rounds": 1,
               "policy": QUICK_POLICY.__dict__, "work": str(tmp_path), "train_model": "zscir-tiny", "train_batch": 4}
    result = ld.measure_worker(request)
    (figure,) = result["figures"]
    assert figure["workload"] == "lincir_step" and figure["condition"] == "idle"
    assert figure["stats"]["batch"] == 4 and figure["stats"]["n"] == QUICK_POLICY.min_reps
    assert result["info"]["model"] == "zscir-tiny" and result["info"]["torch_threads"] == 2


def test_the_load_command_refuses_unknown_loads_before_any_work():
    result = runner.invoke(app, ["load", "--loads", "gpu", "--models", ""])
    assert result.exit_code == 2 and "--loads" in result.output

