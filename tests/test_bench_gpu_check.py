"""The GPU check on a machine without a GPU: every GPU path is listed as skipped with its reason, no
figure is written for any of them, and the report files are complete. On a GPU machine the same
test checks the measured cosines instead."""

import json

from zscir_bench.gpu_check import PATHS, run

from zscir_infer.search import gpu_count


def test_the_gpu_check_claims_nothing_it_did_not_measure(tiny_bundle, tmp_path):
    report = run(tiny_bundle, n_images=6, faiss_n=20_000, out=tmp_path, progress=lambda msg: None)
    assert set(report["paths"]) | set(report["skipped"]) >= {name for name, *_ in PATHS}
    assert not set(report["paths"]) & set(report["skipped"])
    for name, why in report["skipped"].items():
        assert why and "Traceback" not in why, name
    for name, figures in report["paths"].items():  # only where a GPU path really ran
        assert figures["min_cos_images"] >= 0.99 and min(figures["min_cos_golden"].values()) >= 0.99, name
    if gpu_count() == 0:
        assert report["faiss"] is None and "no GPU" in report["skipped"]["faiss-gpu"]
    else:
        assert report["faiss"]["gpu"]["on_gpu"] and report["faiss"]["gpu"]["recall_at_10"] >= 0.9
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["skipped"] == report["skipped"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "Skipped (not measured, no figure claimed)" in md or not report["skipped"]
    for name in report["skipped"]:
        assert f"**{name}**" in md and f"| {name} |" not in md
