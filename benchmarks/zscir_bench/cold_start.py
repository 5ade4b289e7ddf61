"""Cold start: wall time of one composed query from a fresh process, zscir-infer vs the PyTorch reference.

Both programs start Python, load the model, read the same gallery, encode one (image, text) query and
print the top 10. The file cache is warmed by one untimed run of each, so the figure is process start +
imports + model load + one query, not disk speed.
"""

from __future__ import annotations

import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zscir_bench import samples
from zscir_bench.search_bench import clustered_vectors
from zscir_infer.bundle import load_bundle
from zscir_infer.gallery import Gallery

DEFAULT_RUNS = 3
DEFAULT_GALLERY = 10_000
ADD_BATCH = 4096
QUERY_TEXT = "as a pencil sketch"
SYNTHETIC_DIR = "synthetic"
SYNTHETIC_PATH = re.compile(rf"{SYNTHETIC_DIR}/\d+\.jpg")  # the gallery paths a program printed, in rank order


def synthetic_gallery(root: Path, bundle_dir: Path, n: int) -> Path:
    """A gallery of n synthetic feature vectors for the bundle (search cost is what matters here)."""
    bundle = load_bundle(bundle_dir, verify=False)
    xb, _ = clustered_vectors(n, bundle.embed_dim)
    with Gallery.create(root, bundle_id=bundle.bundle_id, embed_dim=bundle.embed_dim, index_spec="flat",
                        bundle=bundle_dir.name) as g:
        for start in range(0, n, ADD_BATCH):
            ids = range(start, min(n, start + ADD_BATCH))
            g.add([f"item-{i}" for i in ids], [f"{SYNTHETIC_DIR}/{i:07d}.jpg" for i in ids], xb[start:start + len(ids)])
        g.build_index()
    return root


def _time(command: list[str], runs: int) -> dict:
    warm = subprocess.run(command, check=True, capture_output=True, text=True)  # warms the file cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": runs, "times_s": times,
            "results": SYNTHETIC_PATH.findall(warm.stdout)}


def _shown(command: list[str], bundle: Path, gallery: Path, image: Path) -> str:
    """The command as the report shows it: program names, not this machine's paths."""
    names = {str(bundle): "BUNDLE", str(gallery): "GALLERY", str(image): "REF.jpg", sys.executable: "python"}
    return shlex.join(Path(c).name if c.endswith("zscir-infer") else names.get(c, c) for c in command)


def run_cold_start(bundle_dir: Path, *, threads: int, runs: int = DEFAULT_RUNS, gallery_size: int = DEFAULT_GALLERY,
                   checkpoint: Path | None = None, weights: str | None = None) -> dict:
    zscir_infer = str(Path(sys.executable).parent / "zscir-infer")
    with tempfile.TemporaryDirectory() as tmp:
        gallery = synthetic_gallery(Path(tmp) / "gallery", bundle_dir, gallery_size)
        image = samples.write_jpegs(Path(tmp) / "images", 1)[0]
        common = [str(image), QUERY_TEXT, "--bundle", str(bundle_dir), "--gallery", str(gallery), "--threads", str(threads)]
        torch_extra = [*(["--checkpoint", str(checkpoint)] if checkpoint else []), *(["--weights", weights] if weights else [])]
        commands = {
            "zscir-infer query (ORT fp32)": [zscir_infer, "query", *common],
            "PyTorch reference": [sys.executable, "-m", "zscir_bench.torch_query", *common, *torch_extra],
        }
        results = {name: {**_time(cmd, runs), "command": _shown(cmd, bundle_dir, gallery, image)}
                   for name, cmd in commands.items()}
    runtime, reference = (results[name]["median_s"] for name in commands)
    return {"bundle": bundle_dir.name, "threads": threads, "gallery_size": gallery_size, "runs": results,
            "ratio": runtime / reference}
