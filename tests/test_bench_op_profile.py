"""Operator profiles: ONNX Runtime traces summed per operator type, the warm-up run left out."""

import numpy as np
import pytest
from zscir_bench import roofline
from zscir_bench.op_profile import kernel_times, profile_graph, summarize_ops


def node(op: str, ts: int, dur: int) -> dict:
    return {"cat": "Node", "name": f"{op}_node_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_kernel_times_sum_per_op_and_skip_the_first_run():
    trace = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        node("MatMul", 10, 999), node("Add", 20, 999),  # warm-up run: left out
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
        node("MatMul", 210, 30), node("MatMul", 250, 10), node("Add", 260, 5),
        {"cat": "Node", "name": "MatMul_fence_before", "ts": 240, "dur": 7, "args": {"op_name": "MatMul"}},
    ]
    totals, runs = kernel_times(trace)
    assert totals == {"MatMul": 40.0, "Add": 5.0} and runs == 1


def test_summary_shares_add_up_and_gemm_share_counts_matmuls():
    summary = summarize_ops({"MatMul": 60.0, "LayerNormalization": 30.0, "DynamicQuantizeMatMul": 10.0}, runs=2)
    assert sum(v["share"] for v in summary["ops"].values()) == pytest.approx(1.0)
    assert list(summary["ops"]) == ["MatMul", "LayerNormalization", "DynamicQuantizeMatMul"]
    assert summary["gemm_share"] == pytest.approx(0.7)
    assert summary["kernel_ms_per_run"] == pytest.approx(100.0 / 2 / 1e3)


def test_a_real_profile_of_a_matmul_graph_is_all_gemm(tmp_path):
    path = tmp_path / "gemm.onnx"
    path.write_bytes(roofline._matmul_model(64, integer=False))
    a = np.ones((64, 64), np.float32)
    summary = profile_graph(path, {"a": a, "b": a}, threads=1, runs=2)
    assert list(summary["ops"]) == ["MatMul"] and summary["gemm_share"] == pytest.approx(1.0)
