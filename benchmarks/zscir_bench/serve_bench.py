"""`zscir-bench serve`: the HTTP server under load, batching on and off.

Starts `zscir-infer serve` on loopback as its own process, drives it with N concurrent clients (one
asyncio httpx client in this process, so client and server share the machine: the figures say so)
for a bounded count and time per concurrency level, and records throughput, latency percentiles,
errors and the server's RSS (VmRSS, peak VmHWM from /proc). Then, batching on, RSS after a short and
a long run of requests (flat memory). Requests name a gallery image as reference (the server still
reads and decodes its file) and cycle through modification texts, or come from a query batch file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

DEFAULT_CONCURRENCY = (1, 4, 16, 64)
MODES = {"batching": 32, "no-batching": 1}  # --max-batch of each mode
MAX_WAIT_MS = 5.0
STARTUP_S = 180
TEXTS = ("make it red", "as a sketch", "with a blue background", "make it a square", "two of them",
         "smaller and in the corner")
PERCENTILES = (50, 95, 99)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> dict[str, float]:
    """The process's resident (VmRSS) and peak resident (VmHWM) memory, MB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return {"rss_mb": round(fields.get("VmRSS", 0.0), 1), "peak_rss_mb": round(fields.get("VmHWM", 0.0), 1)}


class Server:
    """`zscir-infer serve` in a child process on a free loopback port."""

    def __init__(self, bundle: Path, gallery: Path, max_batch: int, threads: int | None, extra: list[str] = ()):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "zscir_infer.cli", "serve", "--bundle", str(bundle), "--gallery", str(gallery),
               "--port", str(self.port), "--max-batch", str(max_batch), "--max-wait-ms", str(MAX_WAIT_MS),
               "--max-queue", "4096", "--log-level", "warning", *extra]
        if threads:
            cmd += ["--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"zscir-infer serve exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"zscir-infer serve did not answer /readyz within {STARTUP_S} s")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> Server:
        try:
            self.wait_ready()
        except BaseException:
            self.proc.kill()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def request_list(gallery: Path, queries: Path | None, n: int, seed: int = 0) -> list[dict]:
    """Form fields of n search requests: from a batch file, else gallery names with the TEXTS."""
    if queries is not None:
        from zscir_infer.query import read_batch

        batch = read_batch(queries)
        return [{"reference": r.reference, "text": r.text} for r in (batch * (n // len(batch) + 1))[:n]]
    from zscir_infer.gallery import Gallery

    with Gallery.open(gallery) as g:
        names = [item.name for item in g.all_items()]
    rng = np.random.default_rng(seed)
    return [{"reference": names[int(rng.integers(len(names)))], "text": TEXTS[i % len(TEXTS)]} for i in range(n)]


async def _drive(base: str, fields: list[dict], concurrency: int, max_seconds: float, k: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        start = time.perf_counter()
        deadline = start + max_seconds

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(fields) and time.perf_counter() < deadline:
                data = {**fields[next_index], "k": str(k)}
                next_index += 1
                t0 = time.perf_counter()
                try:
                    response = await client.post("/v1/search", data=data)
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                if status == "200":
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[status] = errors.get(status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ms = np.asarray(latencies) * 1e3
    return {"concurrency": concurrency, "requests": len(latencies) + sum(errors.values()), "ok": len(latencies),
            "errors": errors, "seconds": round(elapsed, 3),
            "throughput_rps": round(len(latencies) / elapsed, 2) if elapsed else None,
            **{f"p{p}_ms": round(float(np.percentile(ms, p)), 2) if len(ms) else None for p in PERCENTILES}}


def drive(base: str, fields: list[dict], concurrency: int, max_seconds: float, k: int = 10) -> dict:
    return asyncio.run(_drive(base, fields, concurrency, max_seconds, k))


def run_serve_bench(
    bundle: Path,
    gallery: Path,
    *,
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY,
    requests: int = 2000,
    max_seconds: float = 30.0,
    rss_requests: tuple[int, int] = (100, 10_000),
    queries: Path | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] = print,
) -> dict:
    """The figures of the module doc -> a report body (see `zscir_bench.machine.recorded`)."""
    from zscir_infer.bundle import load_bundle

    fields = request_list(gallery, queries, max(requests, rss_requests[1]))
    manifest = load_bundle(bundle)
    levels = []
    for mode, max_batch in MODES.items():
        with Server(bundle, gallery, max_batch, threads) as server:
            drive(server.base, fields[:32], 4, max_seconds)  # warm-up: sessions, caches, first allocations
            for c in concurrency:
                progress(f"{mode}: {c} concurrent clients")
                level = drive(server.base, fields[:requests], c, max_seconds)
                levels.append({"mode": mode, "max_batch": max_batch, **level, **rss_mb(server.proc.pid)})
    rss = None
    if rss_requests[1]:
        with Server(bundle, gallery, MODES["batching"], threads) as server:
            progress(f"memory: {rss_requests[0]} then {rss_requests[1]} requests, 16 clients")
            first = drive(server.base, fields[: rss_requests[0]], 16, 3600)
            after_first = rss_mb(server.proc.pid)
            rest = drive(server.base, fields[rss_requests[0] : rss_requests[1]], 16, 3600)
            after_all = rss_mb(server.proc.pid)
            rss = {"after": {str(rss_requests[0]): after_first, str(rss_requests[1]): after_all},
                   "errors": {**first["errors"], **rest["errors"]}, "throughput_rps": rest["throughput_rps"],
                   "growth_mb": round(after_all["rss_mb"] - after_first["rss_mb"], 1)}
    return {"bundle": str(bundle), "bundle_id": manifest.bundle_id, "model": manifest.manifest.get("backbone", {}).get("model"),
            "gallery": str(gallery), "max_wait_ms": MAX_WAIT_MS, "requests_per_level": requests,
            "max_seconds_per_level": max_seconds, "levels": levels, "memory": rss, "client": "in the same machine "
            "(one asyncio httpx client process): client and server share the cores"}


def batching_gain(report: dict, concurrency: int = 16) -> float | None:
    by = {(lv["mode"], lv["concurrency"]): lv for lv in report["levels"]}
    on, off = by.get(("batching", concurrency)), by.get(("no-batching", concurrency))
    if not on or not off or not off["throughput_rps"]:
        return None
    return on["throughput_rps"] / off["throughput_rps"]


def screenshot(bundle: Path, gallery: Path, examples: Path, out: Path, example_index: int = 0, k: int = 12) -> Path:
    """The search page after an example query, in Debian's headless Chromium (for the README)."""
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with Server(bundle, gallery, MODES["batching"], None, ["--examples", str(examples)]) as server, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(server.base)
        page.wait_for_function("document.getElementById('example').options.length > 1")
        page.select_option("#example", index=example_index + 1)
        page.fill("#k", str(k))
        page.click("#search")
        page.wait_for_selector("#results figure")
        page.wait_for_function("[...document.images].every((im) => im.complete)")
        page.evaluate("window.scrollTo(0, 0)")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        browser.close()
    return out


def serve_md(report: dict) -> str:
    from zscir_bench.report import _table, machine_md

    lines = [f"# Serving: `zscir-infer serve` under load ({report.get('model') or Path(report['bundle']).name})", "",
             f"Command: `{report['command']}`", "", *machine_md(report), "",
             f"Bundle `{report['bundle']}`, gallery `{report['gallery']}`; requests name a gallery image as "
             f"reference; batching = --max-batch 32 --max-wait-ms {report['max_wait_ms']}, no batching = "
             f"--max-batch 1. {report['client']}.", ""]
    rows = [[lv["mode"], lv["concurrency"], lv["ok"], sum(lv["errors"].values()), lv["throughput_rps"], lv["p50_ms"],
             lv["p95_ms"], lv["p99_ms"], round(lv["p99_ms"] / lv["p50_ms"], 2) if lv["p50_ms"] else None,
             lv["peak_rss_mb"]] for lv in report["levels"]]
    lines += _table(["mode", "clients", "ok", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "p99/p50",
                     "peak RSS MB"], rows)
    gain = batching_gain(report)
    if gain is not None:
        lines += ["", f"Throughput at 16 clients, batching vs none: **{gain:.2f}x**."]
    if report.get("memory"):
        m = report["memory"]
        (a, ra), (b, rb) = list(m["after"].items())
        lines += ["", f"Memory (batching, 16 clients): RSS {ra['rss_mb']} MB after {a} requests, {rb['rss_mb']} MB "
                      f"after {b} (growth {m['growth_mb']} MB; peak {rb['peak_rss_mb']} MB); errors {m['errors'] or 0}."]
    return "\n".join(lines) + "\n"


def serve_plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in MODES:
        lv = [x for x in report["levels"] if x["mode"] == mode]
        c = [x["concurrency"] for x in lv]
        left.plot(c, [x["throughput_rps"] for x in lv], marker="o", label=mode)
        right.plot(c, [x["p50_ms"] for x in lv], marker="o", label=f"{mode} p50")
        right.plot(c, [x["p99_ms"] for x in lv], marker="x", linestyle="--", label=f"{mode} p99")
    for ax, title, ylabel in ((left, "throughput", "requests / s"), (right, "latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"zscir-infer serve: {report.get('model') or Path(report['bundle']).name}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_serve_report(report: dict, out: Path) -> list[Path]:
    from zscir_infer.atomic import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "serve.json", out / "serve.md"]
    atomic_write_json(paths[0], report)
    atomic_write_text(paths[1], serve_md(json.loads(json.dumps(report))))
    paths.append(serve_plot(report, out / "serve.png"))
    return paths


def ensure_gallery(bundle: Path, images: Path, work: Path) -> Path:
    """A gallery of `images` encoded by `bundle` in work (reused when present)."""
    from zscir_infer.bundle import load_bundle
    from zscir_infer.indexing import index_images

    gallery = work / f"gallery-{load_bundle(bundle).bundle_id[:12]}"
    if not gallery.is_dir():
        summary = index_images(images, bundle=bundle, gallery=gallery, workers=os.cpu_count() or 1)
        if not summary.count:
            raise RuntimeError(f"No image of {images} could be indexed ({len(summary.bad)} skipped, e.g. "
                               f"{summary.bad[:1]}): a list file names existing image files, one per line.")
    return gallery
