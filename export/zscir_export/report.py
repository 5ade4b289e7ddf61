"""What an export achieved, as JSON and markdown: validation figures, export times, file sizes."""

from __future__ import annotations

import platform

from zscir_export.bundle import ExportResult

MB = 1024 * 1024


def export_report(result: ExportResult) -> dict:
    """The figures of one export (what results/export/ records)."""
    manifest = result.manifest
    return {
        "bundle": result.bundle.name,
        "backbone": manifest["backbone"]["name"],
        "pretrained": manifest["backbone"]["pretrained"],
        "method": manifest["method"],
        "embed_dim": manifest["embed_dim"],
        "total_seconds": round(result.seconds, 2),
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        "versions": manifest["exporter"]["versions"],
        "graphs": [
            {
                "graph": g.graph,
                "precision": g.precision,
                "files": g.files,
                "megabytes": round(g.bytes / MB, 2),
                "seconds": round(g.seconds, 2),
                "checks": [{"output": c.output, "max_abs": c.max_abs, "min_cosine": c.min_cosine,
                            "threshold_min_cosine": c.tolerance.min_cosine,
                            "threshold_max_abs": c.tolerance.max_abs, "passed": c.passed} for c in g.checks],
            }
            for g in result.graphs
        ],
    }


def markdown_table(reports: list[dict]) -> str:
    """One row per graph and precision of every report."""
    rows = ["| backbone | method | graph | precision | MB | export s | max abs | min cosine | threshold | pass |",
            "|---|---|---|---|---:|---:|---:|---:|---|---|"]
    for r in reports:
        for g in r["graphs"]:
            for c in g["checks"]:
                need = f"cos >= {c['threshold_min_cosine']}"
                if c["threshold_max_abs"] is not None:
                    need += f", abs <= {c['threshold_max_abs']:g}"
                rows.append(f"| {r['backbone']} | {r['method']} | {g['graph']} | {g['precision']} | {g['megabytes']} | "
                            f"{g['seconds']} | {c['max_abs']:.3g} | {c['min_cosine']:.7f} | {need} | "
                            f"{'yes' if c['passed'] else 'NO'} |")
    return "\n".join(rows) + "\n"
