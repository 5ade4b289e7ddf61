"""zscir-bench fusions: ORT's transformer optimizer on a real (tiny) bundle; the bookkeeping, not the speed."""

import json

import pytest
from typer.testing import CliRunner
from zscir_bench import fusions as fu
from zscir_bench.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def fusions_report(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("fusions")
    result = runner.invoke(app, ["fusions", "--bundle", str(tiny_bundle), "--batch", "1,3", "--quick",
                                 "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "fusions.json").read_text())


def test_every_graph_is_fused_checked_and_timed(fusions_report):
    out, report = fusions_report
    assert set(report["graphs"]) == set(fu.GRAPHS)
    for graph, r in report["graphs"].items():
        assert r["min_cosine"] >= fu.PARITY_COSINE, graph  # the optimizer keeps fp32 numbers
        assert set(r["timings"]) == {"1", "3"}
        assert all(t[k]["n"] >= 2 for t in r["timings"].values() for k in ("plain", "fused"))
        assert (r["sequence"] is None) == (graph == "image_encoder")
        if r["sequence"]:
            assert all(length % 8 == 0 for length in r["sequence"].values())  # trimmed as the runtime trims
        assert r["adopt"] == fu.decide(r)[0] and r["why"]
    md = (out / "fusions.md").read_text()
    assert "export keeps" in md and "load at start" in md


def test_the_decision_needs_parity_and_a_gain_at_every_batch():
    def result(cos, plain, fused, ops=None):
        return {"fused_ops": {"SkipLayerNormalization": 3} if ops is None else ops, "min_cosine": cos,
                "timings": {b: {"plain": {"p50_ms": p}, "fused": {"p50_ms": f}}
                            for b, p, f in zip(("1", "32"), plain, fused, strict=True)}}
    assert fu.decide(result(1.0, (10, 100), (9, 90)))[0] is True
    assert fu.decide(result(1.0, (10, 100), (9, 99)))[0] is False  # only 1% at batch 32
    adopt, why = fu.decide(result(0.9999, (10, 100), (5, 50)))
    assert adopt is False and "parity" in why
    assert fu.decide(result(1.0, (10, 100), (5, 50), ops={}))[0] is False
