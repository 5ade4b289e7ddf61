"""The latency benchmark on the tiny bundle: stage outputs agree between PyTorch and ONNX Runtime (the
stages time the same computation), the report's ratios and rooflines are what its numbers say, and the
CLI writes JSON, Markdown and real PNGs. No timing is asserted."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner
from zscir_bench import latency as lat
from zscir_bench import report, samples
from zscir_bench.cli import app
from zscir_bench.reference_model import reference_for_bundle
from zscir_bench.search_bench import clustered_vectors
from zscir_bench.stages import RuntimeStages, TorchStages, parse_backend, stage_calls
from zscir_bench.worker import run_worker

runner = CliRunner()
BATCHES = (1, 3)
GALLERY = 500
CPU_BACKENDS = ["torch", "torch-trimmed", "ort-fp32", "ort-int8"]


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    return samples.write_jpegs(folder, max(BATCHES)), samples.modification_texts(max(BATCHES))


@pytest.fixture(scope="module")
def report_dir(tiny_bundle, tiny_lincir_ckpt, tiny_clip_weights, tmp_path_factory):
    """One quick `zscir-bench latency` run on the tiny bundle, shared by the tests below."""
    out = tmp_path_factory.mktemp("latency-report")
    result = runner.invoke(app, [
        "latency", "--bundle", str(tiny_bundle), "--checkpoint", str(tiny_lincir_ckpt), "--weights",
        str(tiny_clip_weights), "--backends", ",".join(CPU_BACKENDS[1:]), "--batch", ",".join(map(str, BATCHES)),
        "--gallery-size", str(GALLERY), "--quick", "--threads", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def tiny_report(report_dir):
    return json.loads((report_dir / "latency.json").read_text())


def test_backend_names_parse_and_bad_ones_say_what_exists():
    assert parse_backend("ort-int8").precision == "int8"
    assert parse_backend("ort-cuda-fp16").device == "cuda"
    assert parse_backend("trt-fp16").backend == "trt"
    assert (parse_backend("openvino-int8").backend, parse_backend("openvino-int8").precision) == ("openvino", "int8")
    with pytest.raises(ValueError, match="ort-PRECISION"):
        parse_backend("onnx-fp32")


def test_available_backends_on_a_cpu_machine(tiny_bundle):
    names, skipped = lat.available_backends(tiny_bundle)
    assert names[:5] == ["torch", "torch-trimmed", "ort-fp32", "ort-fp16", "ort-int8"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "CUDAExecutionProvider" in skipped["ort-cuda-fp16"]


def test_the_reference_rebuilt_from_the_checkpoint_computes_the_bundles_numbers(tiny_bundle, tiny_lincir_ckpt,
                                                                               tiny_clip_weights):
    _, provenance = reference_for_bundle(tiny_bundle, tiny_lincir_ckpt, str(tiny_clip_weights))
    assert provenance["same_numbers_as_bundle"]
    _, random = reference_for_bundle(tiny_bundle)
    assert not random["same_numbers_as_bundle"] and "random" in random["weights"]


def test_every_stage_computes_the_same_thing_in_pytorch_and_onnx_runtime(tiny_bundle, tiny_lincir_ckpt,
                                                                         tiny_clip_weights, inputs):
    """What each stage times is the same computation on both sides (so the ratios compare like with like)."""
    paths, texts = inputs
    reference, _ = reference_for_bundle(tiny_bundle, tiny_lincir_ckpt, str(tiny_clip_weights))
    xb, _ = clustered_vectors(GALLERY, reference.embed_dim)
    torch_stages = TorchStages(reference, xb, threads=2)
    ort_stages = RuntimeStages(tiny_bundle, parse_backend("ort-fp32"), xb, threads=2, max_batch=4)
    assert torch_stages.prompts(texts) == ort_stages.prompts(texts)
    out = {}
    for name, stages in (("torch", torch_stages), ("ort", ort_stages)):
        calls = stage_calls(stages, paths, texts)
        out[name] = {stage: call() for stage, call in calls.items()}
    to_np = {k: np.asarray(v) for k, v in out["torch"].items()}
    np.testing.assert_allclose(out["ort"]["decode_preprocess"], to_np["decode_preprocess"], atol=1e-5)
    np.testing.assert_array_equal(out["ort"]["tokenize"], to_np["tokenize"])
    for stage in ("image_encode", "query_encode", "text_encode"):
        assert cosines(out["ort"][stage], to_np[stage]).min() > 0.9999, stage
    np.testing.assert_array_equal(out["ort"]["end_to_end"][:, 0], to_np["end_to_end"][:, 0])  # same top hit
    # the trimmed reference: ids cut after the last EOT as the runtime cuts them, the same features
    trimmed = {stage: np.asarray(call()) for stage, call in stage_calls(TorchStages(reference, xb, threads=2, trim=True),
                                                                         paths, texts).items()}
    length = trimmed["tokenize"].shape[1]
    assert length % 8 == 0 and length < to_np["tokenize"].shape[1]
    np.testing.assert_array_equal(trimmed["tokenize"], to_np["tokenize"][:, :length])
    assert not to_np["tokenize"][:, length:].any()  # only padding was cut
    for stage in ("query_encode", "text_encode"):
        assert cosines(trimmed[stage], to_np[stage]).min() > 0.99999, stage
    np.testing.assert_array_equal(trimmed["end_to_end"], to_np["end_to_end"])
    np.testing.assert_array_equal(out["ort"]["search"], to_np["search"])  # the runtime's search: the same top 10


def test_the_report_holds_every_backend_stage_and_batch(tiny_report):
    assert list(tiny_report["backends"]) == CPU_BACKENDS
    for b in tiny_report["backends"].values():
        assert set(b["stages"]) == set(lat.STAGES)
        for per_batch in b["stages"].values():
            assert sorted(int(x) for x in per_batch) == list(BATCHES)
            for s in per_batch.values():
                assert s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] and s["n"] >= 2
    assert tiny_report["reference"]["same_numbers_as_bundle"] and tiny_report["threads"] == 2
    assert tiny_report["peaks"]["fp32_peak_gflops"] > 0
    assert {g["name"] for g in tiny_report["peaks"]["gemms"]} == {
        "numpy-openblas", "ort-matmul-fp32", "ort-matmulinteger-int8"}


def test_ratios_and_rooflines_are_what_the_measurements_say(tiny_report):
    backends, flops, peak = tiny_report["backends"], tiny_report["flops"], tiny_report["peaks"]["fp32_peak_gflops"]
    for name in ("ort-fp32", "ort-int8"):
        for stage, per_batch in tiny_report["ratios"][name].items():
            for batch, ratio in per_batch.items():
                expected = backends[name]["stages"][stage][batch]["p50_ms"] / backends["torch"]["stages"][stage][batch]["p50_ms"]
                assert ratio == pytest.approx(expected)
    entry = tiny_report["roofline"]["ort-fp32"]["image_encode"]["3"]
    achieved = flops["image_encode"] * backends["ort-fp32"]["stages"]["image_encode"]["3"]["items_per_s"] / 1e9
    assert entry["achieved_gflops"] == pytest.approx(achieved)
    assert entry["percent_of_peak"] == pytest.approx(100 * achieved / peak)
    assert "percent_of_int8_peak" in tiny_report["roofline"]["ort-int8"]["image_encode"]["1"]


def test_static_int8_is_calibrated_and_stays_close_to_fp32(tiny_report):
    static = tiny_report["int8_static"]
    assert set(static["timings"]) == {"ort-fp32", "ort-int8-static", "ort-int8-dynamic"}
    assert all(sorted(int(b) for b in t) == list(BATCHES) for t in static["timings"].values())
    assert static["min_cosine_to_fp32"]["ort-int8-static"] > 0.99
    assert static["min_cosine_to_fp32"]["ort-int8-dynamic"] > 0.99


def test_the_operator_profile_covers_the_encoders_at_the_largest_batch(tiny_report):
    profile = tiny_report["op_profile"]
    assert profile["batch"] == max(BATCHES)
    assert set(profile["graphs"]) == {"image_encoder/fp32", "image_encoder/int8", "query_encoder/fp32",
                                      "query_encoder/int8"}
    for p in profile["graphs"].values():
        assert sum(v["share"] for v in p["ops"].values()) == pytest.approx(1.0) and 0 < p["gemm_share"] <= 1


def test_the_report_is_written_as_json_markdown_and_pngs(report_dir):
    assert json.loads((report_dir / "latency.json").read_text())["kind"] == "latency"
    md = (report_dir / "latency.md").read_text()
    for section in ("## Machine", "## Matrix-multiply peak", "## Batch 1", "## Roofline", "## Targets",
                    "## Image encoder: static vs dynamic int8", "## Where the time goes inside the encoders"):
        assert section in md
    assert "load at start" in md and "load at end" in md
    for png in ("latency_vs_batch.png", "stage_breakdown.png"):
        with Image.open(report_dir / png) as im:
            assert im.format == "PNG" and im.size[0] > 100


def test_latency_targets_read_the_report(tiny_report):
    targets = {t["target"]: t for t in report.latency_targets(tiny_report)}
    e2e = targets["ORT fp32 composed query end to end, batch 1, vs PyTorch"]
    ratio = tiny_report["ratios"]["ort-fp32"]["end_to_end"]["1"]
    assert e2e["met"] == (ratio <= report.TARGET_E2E_RATIO) and f"{ratio:.2f}x" in e2e["measured"]
    tokens = tiny_report["inputs"]["prompt_tokens"]
    assert 1 <= tokens["min"] <= tokens["max"] <= tokens["context"]
    query = targets[f"ORT fp32 query encoding, batch 1, prompts of {tokens['min']}-{tokens['max']} tokens, "
                    "vs PyTorch (77 positions)"]
    ratio = tiny_report["ratios"]["ort-fp32"]["query_encode"]["1"]
    assert query["met"] == (ratio <= report.TARGET_QUERY_RATIO) and f"{ratio:.2f}x" in query["measured"]
    engine = next(t for name, t in targets.items() if name.startswith("ORT fp32 query encoding, batch 1, vs PyTorch trimmed"))
    ratio = tiny_report["ratios_trimmed"]["ort-fp32"]["query_encode"]["1"]
    assert engine["met"] is None and f"{ratio:.2f}x" in engine["measured"]
    searches = [t for name, t in targets.items() if name.startswith("search stage")]
    assert len(searches) == 1  # the report ran batches 1 and 3: only batch 1 of the 1/32/128 targets exists


def test_cli_refuses_bad_options_with_what_to_do(tiny_bundle, tmp_path):
    result = runner.invoke(app, ["latency", "--bundle", str(tiny_bundle), "--model", "ViT-B-32"])
    assert result.exit_code != 0 and "exactly one of --bundle or --model" in result.output
    result = runner.invoke(app, ["latency", "--bundle", str(tiny_bundle), "--batch", "1,x"])
    assert result.exit_code != 0 and "comma-separated integers" in result.output
    result = runner.invoke(app, ["latency", "--bundle", str(tmp_path)])
    assert result.exit_code != 0 and "not a zscir bundle" in result.output


def test_a_backend_that_fails_costs_only_its_own_figures(tmp_path):
    """A worker that dies (here: no bundle) yields the reason, with its exit code and last error lines."""
    request = {"backend": "ort-fp32", "bundle": str(tmp_path / "missing"), "batches": [1], "threads": 1,
               "policy": {"warmup": 0, "min_reps": 1, "min_seconds": 0.0, "max_reps": 1}, "gallery_size": 10,
               "stages": ["tokenize"], "images": str(tmp_path), "checkpoint": None, "weights": None}
    result, why = run_worker("zscir_bench.latency_worker", request, tmp_path, "ort-fp32", lambda _msg: None)
    assert result is None and "exit code 1" in why and "missing" in why


def test_the_int8_ceiling_is_amdahls_bound_from_the_profile_and_the_peaks():
    fake = {"op_profile": {"graphs": {"image_encoder/fp32": {"gemm_share": 0.8}}},
            "peaks": {"gemms": [{"name": "ort-matmul-fp32", "best_gflops": 100.0},
                                {"name": "ort-matmulinteger-int8", "best_gflops": 200.0}]}}
    ceiling = report.int8_ceiling(fake)
    assert ceiling["gemm_ratio"] == 2.0 and ceiling["speedup"] == pytest.approx(1 / (0.2 + 0.4))
    assert report.int8_ceiling({"op_profile": None, "peaks": {"gemms": []}}) is None
