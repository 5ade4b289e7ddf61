"""The [gpu] extra pulls one CUDA generation: pip resolves it (a dry run against PyPI) and every CUDA
package it would install is CUDA 12. TensorRT's wheels live on NVIDIA's index, which PyPI-only machines
cannot reach: its requirement is checked as written (tensorrt-cu12, below 11)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with tomllib")

REPO = Path(__file__).resolve().parents[1]
CUDA_MAJOR = 12
# packages whose version is the CUDA version they are (nvidia-cuda-runtime 13.x is CUDA 13), and those
# that name it in a -cuNN suffix
VERSION_IS_CUDA = ("nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-nvjitlink", "cuda-python", "cuda-bindings")


def gpu_requirements() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]


def test_the_gpu_extra_names_one_cuda_generation():
    reqs = gpu_requirements()
    names = {re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0] for r in reqs}
    assert names == {"onnxruntime-gpu", "tensorrt-cu12", "cuda-python", "faiss-gpu-cu12"}
    assert any(r.startswith("tensorrt-cu12") and "<11" in r for r in reqs)  # libnvinfer.so.10 for ORT's TRT EP
    assert any(r.startswith("onnxruntime-gpu[cuda,cudnn]") and "<1.27" in r for r in reqs)  # 1.27+: CUDA 13


@pytest.mark.slow
def test_pip_resolves_the_gpu_extra_to_cuda_12_only(tmp_path):
    report = tmp_path / "report.json"
    reqs = [r for r in gpu_requirements() if not r.startswith("tensorrt")]
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--report", str(report), *reqs], capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and ("Could not find a version" in done.stderr or "NewConnectionError" in done.stderr
                                 or "No matching distribution" in done.stderr):
        pytest.skip(f"PyPI is not reachable from here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-2000:]
    installed = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    cuda = {n: v for n, v in installed.items() if n.startswith(("nvidia-", "cuda-")) or "-cu1" in n}
    assert "nvidia-cudnn-cu12" in cuda and "nvidia-cuda-runtime-cu12" in cuda, sorted(installed)
    for name, version in cuda.items():
        suffix = re.search(r"-cu(\d+)$", name)
        if suffix:
            assert int(suffix.group(1)) == CUDA_MAJOR, (name, version)
        elif name in VERSION_IS_CUDA or name.removesuffix(f"-cu{CUDA_MAJOR}") in VERSION_IS_CUDA:
            assert int(version.split(".")[0]) == CUDA_MAJOR, (name, version)
    assert int(installed["onnxruntime-gpu"].split(".")[1]) < 27
