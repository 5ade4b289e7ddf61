"""PNG plots of the reports (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 -- the backend must be chosen first
from matplotlib.ticker import NullFormatter  # noqa: E402

from zscir_infer.atomic import atomic_path  # noqa: E402

DPI = 110
BREAKDOWN = ("decode_preprocess", "tokenize", "image_encode", "query_encode", "search")  # what end_to_end runs
LATENCY_PANELS = ("end_to_end", "image_encode", "query_encode", "decode_preprocess")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return path


def latency_vs_batch(report: dict, path: Path) -> Path:
    """p50 latency per call against batch size, one line per backend, one panel per stage."""
    panels = [s for s in LATENCY_PANELS if any(s in b["stages"] for b in report["backends"].values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, stage in zip(axes[0], panels, strict=True):
        for name, b in report["backends"].items():
            per_batch = b["stages"].get(stage, {})
            xs = sorted(int(x) for x in per_batch)
            ax.plot(xs, [per_batch[str(x)]["p50_ms"] for x in xs], marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="p50 ms per call", title=stage)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def stage_breakdown(report: dict, path: Path, batches: tuple[int, ...] = (1, 32)) -> Path:
    """Stacked p50 per stage for each backend (what the end-to-end query is made of), with the measured
    end-to-end p50 as a marker."""
    batches = tuple(b for b in batches if str(b) in next(iter(report["backends"].values()))["stages"].get(
        "end_to_end", {})) or (report["batches"][0],)
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4), squeeze=False)
    names = list(report["backends"])
    for ax, batch in zip(axes[0], batches, strict=True):
        bottom = [0.0] * len(names)
        for stage in BREAKDOWN:
            heights = [report["backends"][n]["stages"].get(stage, {}).get(str(batch), {}).get("p50_ms", 0.0)
                       for n in names]
            ax.bar(names, heights, bottom=bottom, label=stage)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        e2e = [report["backends"][n]["stages"].get("end_to_end", {}).get(str(batch), {}).get("p50_ms") for n in names]
        ax.scatter([n for n, v in zip(names, e2e, strict=True) if v], [v for v in e2e if v], color="black",
                   marker="_", s=600, label="end_to_end (measured)", zorder=3)
        ax.set(ylabel="p50 ms", title=f"batch {batch}")
        ax.tick_params(axis="x", rotation=30)
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def recall_vs_latency(report: dict, path: Path) -> Path:
    """Recall@10 against p50 latency at batch 1, one line per index type, one panel per gallery size."""
    sizes = report["sizes"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, n in zip(axes[0], sizes, strict=True):
        for r in (r for r in report["results"] if r["n"] == n):
            ax.plot([p["p50_ms"] for p in r["sweep"]], [p["recall_at_10"] for p in r["sweep"]], marker="o",
                    label=r["index"])
        ax.set(xscale="log", xlabel="p50 ms per query (batch 1)", ylabel="recall@10", title=f"{n:,} x {report['d']}",
               ylim=(0, 1.02))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)  # index names (list counts) differ per size
    return _save(fig, path)


def train_cost(report: dict, path: Path) -> Path:
    """Seconds per step for each method and backbone, compute and data side by side."""
    rows = report["backbones"]
    fig, ax = plt.subplots(figsize=(2.6 * len(rows) + 2, 4))
    width, labels = 0.2, [r["backbone"] for r in rows]
    for i, (method, part) in enumerate([(m, p) for m in ("lincir", "pic2word") for p in ("step_s", "data_s")]):
        xs = [j + (i - 1.5) * width for j in range(len(rows))]
        ax.bar(xs, [r[method][part] for r in rows], width, label=f"{method} {part.removesuffix('_s')}")
    ax.set(xticks=range(len(rows)), xticklabels=labels, yscale="log", ylabel=f"seconds per step (batch {rows[0]['batch']})")
    ax.legend(fontsize=8)
    return _save(fig, path)
