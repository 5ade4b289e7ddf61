"""`zscir-bench serve` on the tiny bundle: every request answered, percentiles ordered, reports written."""

import json

import pytest

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")

from zscir_bench.machine import recorded  # noqa: E402
from zscir_bench.serve_bench import batching_gain, run_serve_bench, write_serve_report  # noqa: E402

from tests.test_serve_api import served  # noqa: E402,F401 (module fixture: a tiny indexed gallery)


@pytest.mark.slow
def test_serve_bench_answers_everything_and_writes_its_report(served, tmp_path):  # noqa: F811
    report = recorded("serve", 2, lambda: run_serve_bench(
        served["bundle"], served["gallery"], concurrency=(1, 8), requests=40, max_seconds=60, rss_requests=(10, 60),
        progress=lambda msg: None))
    assert [(lv["mode"], lv["concurrency"]) for lv in report["levels"]] == [
        ("batching", 1), ("batching", 8), ("no-batching", 1), ("no-batching", 8)]
    for lv in report["levels"]:
        assert lv["ok"] == lv["requests"] == 40 and lv["errors"] == {}
        assert 0 < lv["p50_ms"] <= lv["p95_ms"] <= lv["p99_ms"] and lv["throughput_rps"] > 0
        assert lv["peak_rss_mb"] >= lv["rss_mb"] > 0
    assert batching_gain(report, 8) > 0
    memory = report["memory"]
    assert set(memory["after"]) == {"10", "60"} and memory["errors"] == {}
    paths = write_serve_report(report, tmp_path / "out")
    assert [p.name for p in paths] == ["serve.json", "serve.md", "serve.png"]
    assert json.loads(paths[0].read_text())["levels"] == report["levels"]
    md = paths[1].read_text()
    assert "| batching | 8 | 40 | 0 |" in md and "batching vs none" not in md  # no 16-client level was run
    assert paths[2].stat().st_size > 10_000
