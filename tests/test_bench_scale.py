"""`zscir-bench search --backend faiss,milvus` and `--engines`: both stores measured on the same vectors
through zscir's Gallery (exact search at recall 1, the figures the report prints), and indexing timed
per engine."""

import json
import math

import pytest
from typer.testing import CliRunner
from zscir_bench import search_bench as sb
from zscir_bench.cli import app
from zscir_bench.timing import QUICK_POLICY

pytest.importorskip("milvus_lite", reason="the store comparison needs the [milvus] extra")
runner = CliRunner()


def test_both_stores_answer_the_same_vectors_exactly_and_report_their_costs(tmp_path):
    report = sb.run_store_bench(24, [2000], ["faiss", "milvus"], tmp_path / "work", n_queries=30, spec="flat",
                                policy=QUICK_POLICY)
    rows = {r["store"]: r for r in report["store_results"]}
    assert set(rows) == {"faiss", "milvus"} and rows["milvus"]["index"] == "milvus:FLAT"
    for r in rows.values():
        assert r["n"] == 2000 and r["recall_at_10"] == pytest.approx(1.0)  # exact search, same vectors
        assert math.isfinite(r["p50_ms"]) and r["p50_ms"] > 0 and r["insert_per_s"] > 0 and r["build_s"] >= 0
    assert not list((tmp_path / "work").iterdir())  # the galleries are removed after measuring


def test_the_cli_writes_json_and_markdown_with_the_machine(tmp_path):
    out = tmp_path / "scale"
    result = runner.invoke(app, ["search", "--backend", "faiss,milvus", "--sizes", "1500", "--dim", "16", "--quick",
                                 "--queries", "20", "--out", str(out), "--work", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "scale.json").read_text())
    assert report["kind"] == "scale" and [r["store"] for r in report["store_results"]] == ["faiss", "milvus"]
    assert "instruction_sets" in report["machine"]["cpu"]
    md = (out / "scale.md").read_text()
    assert "| milvus | 1,500 |" in md and "instruction sets" in md
    bad = runner.invoke(app, ["search", "--backend", "faiss,qdrant", "--out", str(out)])
    assert bad.exit_code != 0 and "'qdrant'" in bad.output
    no_bundle = runner.invoke(app, ["search", "--engines", "local", "--out", str(out)])
    assert no_bundle.exit_code != 0 and "--bundle" in no_bundle.output


def test_the_engine_benchmark_times_index_images(tmp_path, tiny_bundle):
    report = sb.run_engine_bench(tiny_bundle, 12, ["local"], tmp_path, batch_size=4)
    [row] = report["engines"]
    assert row["engine"] == "local" and row["images"] == 12 and row["images_per_s"] == pytest.approx(12 / row["seconds"])
