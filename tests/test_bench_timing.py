"""Timing bookkeeping and machine info: percentiles against numpy, call counts, shared-machine detection."""

import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from zscir_bench import machine
from zscir_bench.timing import Policy, measure, summarize


def test_summary_percentiles_match_numpy():
    times = [0.010, 0.012, 0.011, 0.050, 0.013]
    s = summarize(times, batch=4)
    ms = np.array(times) * 1e3
    assert s.p50_ms == pytest.approx(np.percentile(ms, 50))
    assert s.p95_ms == pytest.approx(np.percentile(ms, 95))
    assert s.p99_ms == pytest.approx(np.percentile(ms, 99))
    assert s.mean_ms == pytest.approx(ms.mean()) and s.min_ms == pytest.approx(10.0)
    assert s.items_per_s == pytest.approx(4 / ms.mean() * 1e3)
    assert s.n == 5


def test_measure_warms_up_then_repeats_between_min_and_max_reps():
    calls = []
    stats = measure(lambda: calls.append(1), batch=1, policy=Policy(warmup=3, min_reps=4, min_seconds=0.0, max_reps=9))
    assert len(calls) == 3 + 4 and stats.n == 4
    calls.clear()
    stats = measure(lambda: calls.append(1), batch=1, policy=Policy(warmup=0, min_reps=1, min_seconds=3600, max_reps=6))
    assert len(calls) == 6 and stats.n == 6  # the time budget is never reached: max_reps stops it


def test_machine_info_names_cpu_threads_and_libraries():
    info = machine.machine_info(threads=2)
    assert info["threads"] == 2
    assert info["cpu"]["logical_cores"] == os.cpu_count() and info["cpu"]["model"]
    assert info["libraries"]["numpy"] == np.__version__
    assert info["libraries"]["onnxruntime"] == importlib.metadata.version("onnxruntime")
    assert isinstance(info["gpus"], list)


def _cpu_seconds_ticks() -> float:
    t = os.times()
    return (t.user + t.system) * os.sysconf("SC_CLK_TCK")


def test_cpu_ticks_are_this_process_user_plus_system_time_and_grow_with_work():
    before = _cpu_seconds_ticks()
    name, ticks = machine.cpu_ticks(str(os.getpid()))
    after = _cpu_seconds_ticks()
    assert name == Path("/proc/self/comm").read_text().strip()
    assert before - 1 <= ticks <= after + 1  # utime + stime, in clock ticks (not one of the two, not jiffies of another field)
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn 0.3 s of CPU
        pass
    _, later = machine.cpu_ticks(str(os.getpid()))
    assert later - ticks >= 0.2 * os.sysconf("SC_CLK_TCK")


def test_cpu_ticks_parse_a_process_name_with_parentheses_and_spaces(tmp_path):
    """/proc/PID/stat holds `PID (NAME) STATE ...`, where NAME may itself contain ') (' and spaces."""
    odd = tmp_path / "a) (b c"
    odd.symlink_to(sys.executable)
    started = time.monotonic()
    child = subprocess.Popen([str(odd), "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        name, ticks = machine.cpu_ticks(str(child.pid))
        elapsed_ticks = (time.monotonic() - started) * os.sysconf("SC_CLK_TCK")
        assert name == "a) (b c"
        assert 1 <= ticks <= elapsed_ticks + 1  # a busy loop's CPU time: not a field shifted by the name
    finally:
        child.kill()
        child.wait()
    assert machine.cpu_ticks(str(child.pid)) is None  # gone: no entry, no exception


def test_a_run_is_shared_when_someone_else_was_busy_or_the_load_was_high():
    idle = {"loadavg": [0.5, 0.5, 0.5], "busy_processes": []}
    busy = {"loadavg": [0.5, 0.5, 0.5], "busy_processes": [{"pid": 1, "name": "python", "cpu_percent": 90.0}]}
    loaded = {"loadavg": [5.0, 3.0, 2.0], "busy_processes": []}
    assert not machine.was_shared(idle, idle, cores=2)
    assert machine.was_shared(busy, idle, cores=2)
    assert machine.was_shared(idle, loaded, cores=2)


def test_recorded_wraps_results_with_machine_and_load():
    report = machine.recorded("search", 1, lambda: {"results": [1]})
    assert report["kind"] == "search" and report["results"] == [1]
    assert set(report["load"]) == {"start", "end", "shared"}
    assert report["machine"]["threads"] == 1
