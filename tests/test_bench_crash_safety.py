"""SIGKILL at random points in `zscir-infer index`, `zscir-export` and `zscir-train lincir`: every artifact
is the previous complete version or the new complete one, and the re-run ends equal to an uninterrupted run.

The trials are zscir_bench.crash_harness's. A few kills per command here (time);
`python -m zscir_bench.crash_harness --kills 20 --out results/reliability/crash.json` runs the same trials
at scale and writes the figures the reliability report quotes."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from zscir_bench import crash_harness
from zscir_bench.crash_harness import TRIALS, run_harness

KILLS = 3


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(TRIALS))
def test_sigkill_leaves_a_complete_artifact_and_the_rerun_completes(command, tmp_path):
    (outcome,) = run_harness(tmp_path, KILLS, (command,))
    print(outcome.to_dict())
    assert not outcome.failures, outcome.failures
    assert outcome.kills == KILLS and sum(outcome.states.values()) >= KILLS


def test_the_harness_is_an_installed_tool_independent_of_the_test_tree(tmp_path):
    """It runs as `python -m zscir_bench.crash_harness` from any folder, and imports nothing from tests/."""
    source = Path(crash_harness.__file__)
    imported = [node.module if isinstance(node, ast.ImportFrom) else alias.name
                for node in ast.walk(ast.parse(source.read_text()))
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in (node.names if isinstance(node, ast.Import) else [None])]
    assert [m for m in imported if m and m.split(".")[0] == "tests"] == []
    done = subprocess.run([sys.executable, "-m", "zscir_bench.crash_harness", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--kills" in done.stdout and "--out" in done.stdout
