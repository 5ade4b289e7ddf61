"""Cold start: both programs (zscir-infer query and the PyTorch reference) run from fresh processes on the
same synthetic gallery and answer the same query with the same ranking."""

import json

import pytest
from typer.testing import CliRunner
from zscir_bench.cli import app

runner = CliRunner()


def test_cold_start_runs_both_programs_on_the_same_query(tiny_bundle, tiny_lincir_ckpt, tiny_clip_weights, tmp_path):
    result = runner.invoke(app, ["cold-start", "--bundle", str(tiny_bundle), "--checkpoint", str(tiny_lincir_ckpt),
                                 "--weights", str(tiny_clip_weights), "--runs", "1", "--gallery-size", "300",
                                 "--threads", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "cold_start.json").read_text())
    runs = data["runs"]
    assert set(runs) == {"zscir-infer query (ORT fp32)", "PyTorch reference"}
    medians = [r["median_s"] for r in runs.values()]
    assert data["ratio"] == pytest.approx(medians[0] / medians[1])
    assert str(tmp_path) not in json.dumps(runs)  # no machine paths in a committed report
    ranked = [r["results"] for r in runs.values()]
    assert len(ranked[0]) == 10 and ranked[0] == ranked[1]  # the same query, answered the same way
