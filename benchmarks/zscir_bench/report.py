"""Reports: the raw JSON, a Markdown page and PNG plots per benchmark, written atomically to one folder.

Every page starts with the machine, the thread count and whether other processes shared the cores
(load average and busy processes at the start and the end), and ends with the issue's targets:
the measured figure, the target, and whether it was met.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from zscir_bench import load, plots
from zscir_infer.atomic import atomic_write_json, atomic_write_text

TARGET_E2E_RATIO = 0.45  # ORT fp32 composed-query p50 end to end at batch 1 <= 0.45x the PyTorch reference
TARGET_E2E32_RATIO = 0.7  # ... and at batch 32 <= 0.7x
TARGET_QUERY_RATIO = 0.3  # query encoding (phi + text transformer) at batch 1, prompts <= 20 tokens
TARGET_SEARCH_RATIO = 1.0  # the runtime's search stage vs torch matmul + topk, batch 1, 32, 128
TARGET_PEAK_PERCENT = 70.0  # image encoding at batch 32 >= 70% of the matmul peak
TARGET_INT8_SPEEDUP = 1.8  # ORT int8 >= 1.8x ORT fp32 throughput
TARGET_INT8_R10_POINTS = 1.0  # ... with <= 1 point R@10 change on the world
TARGET_SEARCH_MS, TARGET_SEARCH_RECALL, TARGET_SEARCH_N = 1.0, 0.95, 1_000_000
TARGET_COLD_START_RATIO = 0.3
ROOFLINE_BATCH = "32"
OP_PROFILE_TOP = 6


def _f(x) -> str:
    """Numbers for tables: 3 significant digits below 100 (so 0.0042 s stays readable), integers above."""
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    if isinstance(x, int) or abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _target(name: str, measured: str, goal: str, met: bool | None, note: str = "") -> dict:
    return {"target": name, "measured": measured, "goal": goal, "met": met, "note": note}


def machine_md(report: dict) -> list[str]:
    m, load = report["machine"], report["load"]
    cpu = m["cpu"]
    gpus = ", ".join(g["name"] for g in m["gpus"]) or "none"
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    lines = [
        "## Machine", "",
        f"- CPU: {cpu['model']} ({cpu['usable_cores']} usable cores of {cpu['logical_cores']}, {cpu['architecture']}); "
        f"instruction sets: {', '.join(cpu['instruction_sets']) or 'unknown'}",
        f"- GPU: {gpus}",
        f"- threads used: {m['threads']}; BLAS environment: {m['blas_env'] or 'none set'}",
        f"- libraries: {libs}; Python {m['python']} on {m['os']}",
    ]
    for when in ("start", "end"):
        snap = load[when]
        busy = ", ".join(f"{p['name']} ({p['cpu_percent']:.0f}%)" for p in snap["busy_processes"]) or "none"
        lines.append(f"- load at {when} ({snap['time']}): load average {', '.join(f'{x:.2f}' for x in snap['loadavg'])}; "
                     f"other busy processes: {busy}")
    if load["shared"]:
        lines.append("- **The cores were shared with other processes during this run: figures are pessimistic "
                     "and noisier than on an idle machine.**")
    return lines + [""]


def targets_md(targets: list[dict]) -> list[str]:
    rows = [[t["target"], t["measured"], t["goal"], {True: "met", False: "**missed**", None: "n/a"}[t["met"]],
             t["note"]] for t in targets]
    return ["## Targets", "", *_table(["target", "measured", "goal", "status", "note"], rows)]


# --- latency -----------------------------------------------------------------------------------------------
def _stat(report: dict, backend: str, stage: str, batch: str) -> dict | None:
    return report["backends"].get(backend, {}).get("stages", {}).get(stage, {}).get(batch)


def _ratio_target(report: dict, name: str, backend: str, stage: str, batch: str, goal: float | None,
                  reference: str = "torch") -> dict | None:
    """Target row: backend's p50 over the reference's at one stage and batch (goal None: reported only)."""
    mine, ref = _stat(report, backend, stage, batch), _stat(report, reference, stage, batch)
    if not (mine and ref):
        return None
    ratio = mine["p50_ms"] / ref["p50_ms"]
    return _target(name, f"{ratio:.2f}x ({mine['p50_ms']:.3g} vs {ref['p50_ms']:.3g} ms p50)",
                   f"<= {goal}x" if goal is not None else "reported", ratio <= goal if goal is not None else None)


def latency_targets(report: dict) -> list[dict]:
    tokens = (report.get("inputs") or {}).get("prompt_tokens")
    prompts = f"prompts of {tokens['min']}-{tokens['max']} tokens" if tokens else "short prompts"
    rows = [
        _ratio_target(report, f"ORT fp32 query encoding, batch 1, {prompts}, vs PyTorch (77 positions)",
                      "ort-fp32", "query_encode", "1", TARGET_QUERY_RATIO),
        _ratio_target(report, "ORT fp32 query encoding, batch 1, vs PyTorch trimmed the same way "
                      "(the engine's share of the gain)", "ort-fp32", "query_encode", "1", None, "torch-trimmed"),
        _ratio_target(report, "PyTorch trimmed vs PyTorch, query encoding, batch 1 (the trimming's share)",
                      "torch-trimmed", "query_encode", "1", None),
        _ratio_target(report, "ORT fp32 composed query end to end, batch 1, vs PyTorch", "ort-fp32",
                      "end_to_end", "1", TARGET_E2E_RATIO),
        _ratio_target(report, "ORT fp32 composed query end to end, batch 32, vs PyTorch", "ort-fp32",
                      "end_to_end", "32", TARGET_E2E32_RATIO),
        *(_ratio_target(report, f"search stage (10k flat), batch {b}, vs PyTorch matmul + topk", "ort-fp32",
                        "search", b, TARGET_SEARCH_RATIO) for b in ("1", "32", "128")),
    ]
    out = [r for r in rows if r is not None]
    roof = report["roofline"].get("ort-fp32", {}).get("image_encode", {}).get(ROOFLINE_BATCH)
    if roof:
        pct = roof["percent_of_peak"]
        out.append(_target("ORT fp32 image encoding, batch 32, % of matmul peak",
                           f"{pct:.0f}% ({roof['achieved_gflops']:.0f} of {report['peaks']['fp32_peak_gflops']:.0f} "
                           "GFLOP/s)", f">= {TARGET_PEAK_PERCENT:.0f}%", pct >= TARGET_PEAK_PERCENT))
    ceiling = int8_ceiling(report)
    for stage in ("image_encode", "end_to_end"):
        i8, f32 = _stat(report, "ort-int8", stage, ROOFLINE_BATCH), _stat(report, "ort-fp32", stage, ROOFLINE_BATCH)
        if i8 and f32:
            speedup = i8["items_per_s"] / f32["items_per_s"]
            note = "accuracy side: see the accuracy report"
            if ceiling is not None:
                note = (f"ceiling on this CPU {ceiling['speedup']:.2f}x: the fp32 image encoder spends "
                        f"{100 * ceiling['gemm_share']:.0f}% in GEMMs and int8 GEMMs run at most "
                        f"{ceiling['gemm_ratio']:.2f}x fp32 here (ORT MatMulInteger vs MatMul peaks); " + note)
            out.append(_target(f"ORT int8 vs fp32 throughput ({stage}, batch 32)", f"{speedup:.2f}x",
                               f">= {TARGET_INT8_SPEEDUP}x", speedup >= TARGET_INT8_SPEEDUP, note))
    return out


def int8_ceiling(report: dict) -> dict | None:
    """The int8 speedup this CPU allows at best (Amdahl): only the fp32 graph's GEMM share g gets faster,
    by at most r = the int8 GEMM peak over ORT's fp32 MatMul peak, everything else costs what it did:
    1 / ((1 - g) + g / r). Without VNNI (AVX2's vpmaddubsw) r is below 2 and so is the ceiling."""
    profile = (report.get("op_profile") or {}).get("graphs", {}).get("image_encoder/fp32")
    gemms = {g["name"]: g["best_gflops"] for g in report.get("peaks", {}).get("gemms", [])}
    fp32, int8 = gemms.get("ort-matmul-fp32"), gemms.get("ort-matmulinteger-int8")
    if not profile or not fp32 or not int8:
        return None
    g, r = profile["gemm_share"], int8 / fp32
    return {"gemm_share": g, "gemm_ratio": r, "speedup": 1.0 / ((1.0 - g) + g / r)}


def latency_md(report: dict) -> str:
    b = report["bundle"]
    lines = [
        f"# Latency: {b['backbone']} ({b['method']} bundle)", "",
        f"Created {report['created']} by `{report['command']}`.", "",
        f"Bundle `{b['name']}`: D={b['embed_dim']}, W={b['width']}, {b['image_size']} px, precisions "
        f"{', '.join(b['precisions'])}. PyTorch reference: backbone {report['reference']['backbone']}, weights: "
        f"{report['reference']['weights']}; phi: {report['reference']['phi']}.", "",
        f"Inputs: {report['inputs']['images']}; {report['inputs']['texts']}{_prompt_note(report)}; search over "
        f"{report['gallery_size']:,} "
        f"gallery vectors. Timing: {report['policy']['warmup']} warm-up calls, then at least "
        f"{report['policy']['min_reps']} calls and {report['policy']['min_seconds']} s per figure; `n` is the number "
        "of timed calls (a p99 over few calls is close to the maximum).", "",
        *machine_md(report),
        "## Matrix-multiply peak (same run)", "",
        *_table(["GEMM", "n", "best GFLOP/s", "median GFLOP/s", "note"],
                [[g["name"], g["n"], g["best_gflops"], g["median_gflops"], g["note"]] for g in report["peaks"]["gemms"]]),
        f"Peak used for rooflines: {report['peaks']['fp32_peak_gflops']:.0f} GFLOP/s "
        f"({report['peaks']['fp32_peak_source']}); int8 graphs are also compared with "
        f"{report['peaks']['int8_peak_gops']:.0f} GOP/s (ORT MatMulInteger).", "",
    ]
    lines += _stage_tables(report)
    lines += _roofline_table(report)
    lines += _int8_static_table(report)
    lines += _op_profile_table(report)
    if report["skipped_backends"]:
        lines += ["## Backends not run", "",
                  *_table(["backend", "why"], [[k, v] for k, v in report["skipped_backends"].items()])]
    lines += targets_md(latency_targets(report))
    lines += ["## Plots", "", "![latency vs batch](latency_vs_batch.png)", "", "![stage breakdown](stage_breakdown.png)", ""]
    return "\n".join(lines)


def _prompt_note(report: dict) -> str:
    tokens = report["inputs"].get("prompt_tokens")
    if not tokens:
        return ""
    return (f" (prompts of {tokens['min']}-{tokens['max']} tokens with end-of-text, of {tokens['context']} positions: "
            "the runtime and `torch-trimmed` feed the text transformer the batch's longest, rounded up to 8; "
            "`torch` feeds all positions as the papers' code does)")


def _stage_tables(report: dict) -> list[str]:
    names = list(report["backends"])
    lines = []
    for batch in (str(b) for b in report["batches"]):
        rows = []
        for stage in next(iter(report["backends"].values()))["stages"]:
            row = [stage]
            for name in names:
                s = _stat(report, name, stage, batch)
                ratio = report["ratios"].get(name, {}).get(stage, {}).get(batch)
                row.append("–" if s is None else f"{s['p50_ms']:.2f} / {s['p95_ms']:.2f} / {s['p99_ms']:.2f}"
                           + (f" ({ratio:.2f}x)" if ratio is not None else ""))
            rows.append(row)
        items = ["items/s (end_to_end)"] + [
            _f((_stat(report, n, "end_to_end", batch) or {}).get("items_per_s")) for n in names]
        overhead = ["end_to_end p50 − Σ stage p50 (pipeline overhead)"] + [
            _f(pipeline_overhead_ms(report, n, batch)) for n in names]
        lines += [f"## Batch {batch}: p50 / p95 / p99 ms per call (ratio of p50 to PyTorch, 77 positions)", "",
                  *_table(["stage", *names], [*rows, items, overhead])]
    return lines


def pipeline_overhead_ms(report: dict, backend: str, batch: str) -> float | None:
    """End-to-end p50 minus the p50s of the stages it is made of: time spent between the stages."""
    from zscir_bench.plots import BREAKDOWN

    e2e = _stat(report, backend, "end_to_end", batch)
    parts = [_stat(report, backend, stage, batch) for stage in BREAKDOWN]
    if e2e is None or any(p is None for p in parts):
        return None
    return e2e["p50_ms"] - sum(p["p50_ms"] for p in parts)


def _roofline_table(report: dict) -> list[str]:
    rows = []
    for name, per_stage in report["roofline"].items():
        for stage, per_batch in per_stage.items():
            e = per_batch.get(ROOFLINE_BATCH)
            if e:
                rows.append([name, stage, e["gflop_per_item"], e["achieved_gflops"], e["percent_of_peak"],
                             e.get("percent_of_int8_peak")])
    return [f"## Roofline at batch {ROOFLINE_BATCH}", "",
            f"FLOPs per item from the open_clip config: image {report['flops']['image_encode'] / 1e9:.4g} GFLOP, query "
            f"{report['flops']['query_encode'] / 1e9:.4g} GFLOP, text {report['flops']['text_encode'] / 1e9:.4g} GFLOP.",
            "", *_table(["backend", "stage", "GFLOP/item", "achieved GFLOP/s", "% of fp32 peak", "% of int8 peak"], rows)]


def _int8_static_table(report: dict) -> list[str]:
    static = report.get("int8_static")
    if not static:
        return []
    cosine = {name: f"{c:.5f}" for name, c in static["min_cosine_to_fp32"].items()}
    rows = [[name, batch, s["p50_ms"], s["items_per_s"], cosine.get(name)]
            for name, per_batch in static["timings"].items() for batch, s in per_batch.items()]
    return ["## Image encoder: static vs dynamic int8", "",
            f"Static: {static['calibration']}. Each graph on ONNX Runtime alone (no pipeline around it).", "",
            *_table(["graph", "batch", "p50 ms", "images/s", "min cosine to fp32"], rows)]


def _op_profile_table(report: dict) -> list[str]:
    profile = report.get("op_profile")
    if not profile:
        return []
    rows = []
    for graph, p in profile["graphs"].items():
        top = ", ".join(f"{op} {100 * v['share']:.0f}%" for op, v in list(p["ops"].items())[:OP_PROFILE_TOP])
        rows.append([graph, p["kernel_ms_per_run"], f"{100 * p['gemm_share']:.0f}%", top])
    return [f"## Where the time goes inside the encoders (ONNX Runtime profiler, batch {profile['batch']})", "",
            "Kernel time per run summed by operator type (first run left out); GEMM share = MatMul/Gemm/Conv "
            "and their quantized forms, the only part that can run near the matmul peak.", "",
            *_table(["graph", "kernel ms per run", "GEMM share", "largest operator types"], rows)]


# --- search ------------------------------------------------------------------------------------------------
def search_targets(report: dict) -> list[dict]:
    from zscir_bench.search_bench import best_meeting

    if TARGET_SEARCH_N not in report["sizes"]:
        return []
    best = best_meeting(report["results"], TARGET_SEARCH_N, TARGET_SEARCH_RECALL)
    goal = f"p50 <= {TARGET_SEARCH_MS} ms at recall@10 >= {TARGET_SEARCH_RECALL}"
    if best is None:
        return [_target(f"HNSW/IVF on {TARGET_SEARCH_N:,} x {report['d']}", "no configuration reached the recall",
                        goal, False)]
    measured = (f"{best['index']} {best['param']}={best['value']}: {best['p50_ms']:.3f} ms at recall@10 "
                f"{best['recall_at_10']:.3f}")
    return [_target(f"HNSW/IVF on {TARGET_SEARCH_N:,} x {report['d']}", measured, goal,
                    best["p50_ms"] <= TARGET_SEARCH_MS)]


def search_md(report: dict) -> str:
    v = report["vectors"]
    lines = [
        f"# Search: FAISS indexes over {', '.join(f'{n:,}' for n in report['sizes'])} vectors of D={report['d']}", "",
        f"Created {report['created']} by `{report['command']}`.", "",
        f"Vectors: {v['kind']} (~{v['vectors_per_cluster']} per cluster, spread {v['spread']}, spectrum decay "
        f"{v['spectrum_decay']}, seed {v['seed']}); {report['n_queries']} queries from the same distribution; "
        f"recall@{report['k']} against exact search. Indexes built by `zscir_infer.search.build_index`. "
        f"Batch 1 is timed on 1 and on {report['threads']} threads (the better is shown; both are in the JSON), "
        f"batch 256 on {report['threads']} threads.", "",
        *machine_md(report),
    ]
    for n in report["sizes"]:
        rows = []
        for r in (r for r in report["results"] if r["n"] == n):
            for p in r["sweep"]:
                rows.append([r["index"], f"{p['param']}={p['value']}" if p["param"] else "exact", r["build_s"],
                             r["memory_bytes"] / 2**20, p["p50_ms"], p["p50_threads"], p["qps_batch256"],
                             p["recall_at_10"]])
        lines += [f"## {n:,} vectors", "",
                  *_table(["index", "search parameter", "build s", "memory MiB", "p50 ms (batch 1)",
                           "threads (batch 1)", "queries/s (batch 256)", "recall@10"], rows)]
    lines += targets_md(search_targets(report))
    lines += ["## Plot", "", "![recall vs latency](recall_vs_latency.png)", ""]
    return "\n".join(lines)


# --- train cost --------------------------------------------------------------------------------------------
def train_cost_md(report: dict) -> str:
    rows = []
    for r in report["backbones"]:
        for method in ("lincir", "pic2word"):
            m = r[method]
            rows.append([r["backbone"], method, r["batch"], m["step_s"], m["data_s"], m["samples_per_s_compute"],
                         m["samples_per_s_with_data"]])
    speedups = [[r["backbone"], r["speedup_compute"], r["speedup_with_data"],
                 r["lincir"]["one_off_masking"]["captions_per_s"]] for r in report["backbones"]]
    lines = [
        "# Training cost: LinCIR (captions) vs Pic2Word (images)", "",
        f"Created {report['created']} by `{report['command']}`. Random weights, precision {report['precision']}, "
        f"{report['threads']} threads; {report['steps_note']}", "",
        *machine_md(report),
        "## Per step", "",
        *_table(["backbone", "method", "batch", "compute s/step", "data s/step (1 process)", "samples/s compute",
                 "samples/s with data"], rows),
        "## LinCIR speed-up over Pic2Word", "",
        *_table(["backbone", "compute", "with data loading", "one-off masking, captions/s"], speedups),
        "The LinCIR paper reports language-only training 6x to 17.6x faster than image-based methods.", "",
        "![train cost](train_cost.png)", "",
    ]
    return "\n".join(lines)


# --- accuracy ----------------------------------------------------------------------------------------------
def accuracy_targets(report: dict) -> list[dict]:
    out = []
    for method, per_backend in report["results"].items():
        f32, i8 = per_backend.get("ort-fp32"), per_backend.get("ort-int8")
        if f32 and i8 and "R@10" in f32:
            delta = i8["R@10"] - f32["R@10"]
            out.append(_target(f"int8 R@10 change on the world ({method})", f"{delta:+.2f} points",
                               f"|change| <= {TARGET_INT8_R10_POINTS}", abs(delta) <= TARGET_INT8_R10_POINTS))
    return out


def accuracy_md(report: dict) -> str:
    backends = report["backends"]
    metrics = report["metrics"]
    lines = [
        "# Accuracy on the shapes world: methods x backends", "",
        f"Created {report['created']} by `{report['command']}`. World: {report['world']}; "
        f"{report['num_queries']} test queries; backbone {report['backbone']}.", "",
        *machine_md(report),
    ]
    for metric in metrics:
        rows = [[method, *[per_backend.get(b, {}).get(metric) for b in backends]]
                for method, per_backend in report["results"].items()]
        lines += [f"## {metric}", "", *_table(["method", *backends], rows)]
    if report.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in report["notes"]], ""]
    lines += targets_md(accuracy_targets(report))
    return "\n".join(lines)


# --- cold start --------------------------------------------------------------------------------------------
def cold_start_md(report: dict) -> str:
    rows = [[name, r["median_s"], r["min_s"], r["runs"], r["command"]] for name, r in report["runs"].items()]
    ratio = report["ratio"]
    target = _target("`zscir-infer query` cold start vs PyTorch reference", f"{ratio:.2f}x", f"<= {TARGET_COLD_START_RATIO}x",
                     ratio <= TARGET_COLD_START_RATIO)
    lines = [
        "# Cold start: one composed query from a fresh process", "",
        f"Created {report['created']} by `{report['command']}`. Gallery of {report['gallery_size']:,} items; "
        "wall time from process start to printed results, file cache warm (one untimed run first).", "",
        *machine_md(report),
        *_table(["program", "median s", "min s", "runs", "command"], rows),
        *targets_md([target]),
    ]
    return "\n".join(lines)


# --- fusions -------------------------------------------------------------------------------------------------

def fusions_md(report: dict) -> str:
    rows = []
    for graph, r in report["graphs"].items():
        for batch, t in r["timings"].items():
            plain, fused = t["plain"]["p50_ms"], t["fused"]["p50_ms"]
            seq = (r.get("sequence") or {}).get(batch)
            rows.append([graph, batch, seq if seq is not None else "–", plain, fused, f"{fused / plain:.3f}x"])
    decisions = [[g, ", ".join(f"{op} {n}" for op, n in r["fused_ops"].items()) or "nothing", f"{r['min_cosine']:.7f}",
                  "fused" if r["adopt"] else "plain", r["why"]] for g, r in report["graphs"].items()]
    lines = [
        f"# ONNX Runtime transformer fusions: {report['bundle']}", "",
        f"Created {report['created']} by `{report['command']}`. ONNX Runtime {report['onnxruntime']}'s offline "
        f"transformer optimizer (model type `{report['model_type']}`) on the bundle's fp32 graphs, against the plain "
        "graphs as the runtime loads them (every ONNX Runtime graph optimization on at session creation, no "
        "spin-waiting); both timed in one process, interleaved call by call. Token ids are cut after the batch's "
        "last end-of-text token as the runtime cuts them.", "",
        *machine_md(report),
        "## What the optimizer fused, parity, and the decision", "",
        *_table(["graph", "fused operators", "min cosine to plain", "export keeps", "why"], decisions),
        "## p50 ms per call", "",
        *_table(["graph", "batch", "ids length", "plain", "fused", "fused / plain"], rows),
        f"A fused graph is adopted only with min cosine >= {report['parity_cosine']} and a p50 at least "
        f"{100 * report['faster_by']:.0f}% below the plain graph's at every batch.", "",
    ]
    return "\n".join(lines)


MARKDOWN: dict[str, Callable[[dict], str]] = {
    "latency": latency_md, "search": search_md, "train_cost": train_cost_md, "accuracy": accuracy_md,
    "cold_start": cold_start_md, "fusions": fusions_md, "load": load.load_md,
}
PLOTS: dict[str, list[tuple[str, Callable]]] = {
    "latency": [("latency_vs_batch.png", plots.latency_vs_batch), ("stage_breakdown.png", plots.stage_breakdown)],
    "search": [("recall_vs_latency.png", plots.recall_vs_latency)],
    "train_cost": [("train_cost.png", plots.train_cost)],
    "load": [("load.png", load.load_plot)],
}


def write_report(report: dict, out: Path) -> list[Path]:
    """`{kind}.json`, `{kind}.md` and the kind's PNG plots in `out`; returns the paths written."""
    kind = report["kind"]
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{kind}.json", out / f"{kind}.md"]
    atomic_write_json(paths[0], report)
    atomic_write_text(paths[1], MARKDOWN[kind](json.loads(json.dumps(report))))
    for name, plot in PLOTS.get(kind, []):
        paths.append(plot(json.loads(json.dumps(report)), out / name))
    return paths
