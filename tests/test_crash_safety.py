"""SIGKILL at random points in `zscir-infer index`, `zscir-export` and `zscir-train lincir`: every artifact
is the previous complete version or the new complete one, and the re-run ends equal to an uninterrupted run.

A few kills per command here (time); `python -m tests.crash_harness --kills 20` runs the same trials at
scale and writes the figures the reliability report quotes."""

import pytest

from tests.crash_harness import TRIALS, run_harness

KILLS = 3


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(TRIALS))
def test_sigkill_leaves_a_complete_artifact_and_the_rerun_completes(command, tmp_path):
    (outcome,) = run_harness(tmp_path, KILLS, (command,))
    print(outcome.to_dict())
    assert not outcome.failures, outcome.failures
    assert outcome.kills == KILLS and sum(outcome.states.values()) >= KILLS
