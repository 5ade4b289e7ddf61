"""What a report needs to be read honestly: the machine, the libraries, the threads, and who else was busy.

A figure measured on 2 shared cores is only comparable with one measured the same way, so every report
records the CPU model, core count, the instruction sets that decide which kernels run (AVX-512 VNNI for
int8, AVX-512 BF16), the GPU if any, library versions, BLAS environment variables, and the load average
plus the other processes using CPU at the start and the end of each benchmark.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

KERNEL_FLAGS = (  # /proc/cpuinfo flags that select GEMM and quantized kernels
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd",
)
LIBRARIES = (
    "numpy", "onnxruntime", "onnxruntime-gpu", "faiss-cpu", "faiss-gpu", "torch", "open_clip_torch", "onnx",
    "tensorrt", "tokenizers", "pillow", "openvino", "pymilvus", "milvus-lite", "ray", "fastapi", "uvicorn",
)
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
BUSY_CPU_PERCENT = 10.0  # a process above this share of one core counts as "another busy process"
BUSY_SAMPLE_S = 1.0
SHARED_LOAD_MARGIN = 0.5  # load average above (1 + margin) means someone besides the benchmark was running
NVIDIA_SMI_TIMEOUT_S = 10
COMMAND_WORDS, COMMAND_CHARS = 4, 80  # how much of a busy process's command line a report shows


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (empty off Linux)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return {}
    fields = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_info() -> dict:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return {
        "model": info.get("model name") or platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "instruction_sets": [f for f in KERNEL_FLAGS if f in flags],
        "architecture": platform.machine(),
    }


def gpu_info() -> list[dict]:
    """GPUs as nvidia-smi reports them; an empty list when there is none."""
    if shutil.which("nvidia-smi") is None:
        return []
    query = "--query-gpu=name,memory.total,driver_version,compute_cap"
    try:
        out = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=NVIDIA_SMI_TIMEOUT_S, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    keys = ("name", "memory", "driver", "compute_capability")
    return [dict(zip(keys, (p.strip() for p in line.split(",")), strict=False)) for line in out.splitlines() if line]


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _command(pid: str, name: str) -> str:
    """The program and its first arguments (file names only: no paths of this machine in a report)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return name
    words = [Path(a.decode(errors="replace")).name for a in argv[:COMMAND_WORDS] if a]
    return " ".join(words)[:COMMAND_CHARS] or name


def cpu_ticks(pid: str) -> tuple[str, int] | None:
    """(name, utime + stime in clock ticks, all threads) of a process ("self": this one); None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return name, int(fields[11]) + int(fields[12])  # utime + stime


def busy_processes(interval_s: float = BUSY_SAMPLE_S) -> list[dict]:
    """Other processes that used more than BUSY_CPU_PERCENT of a core over `interval_s` (Linux /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    ours = {str(os.getpid())}
    pids = [p.name for p in proc.iterdir() if p.name.isdigit() and p.name not in ours]
    before = {pid: t for pid in pids if (t := cpu_ticks(pid))}
    time.sleep(interval_s)
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (name, ticks) in before.items():
        after = cpu_ticks(pid)
        if after is None:
            continue
        percent = 100.0 * (after[1] - ticks) / hz / interval_s
        if percent > BUSY_CPU_PERCENT:
            busy.append({"pid": int(pid), "name": _command(pid, name), "cpu_percent": round(percent, 1)})
    return sorted(busy, key=lambda p: -p["cpu_percent"])


def load_snapshot() -> dict:
    """Load average and other busy processes right now: taken at the start and the end of a benchmark."""
    one, five, fifteen = os.getloadavg()
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg": [one, five, fifteen],
            "busy_processes": busy_processes()}


def was_shared(start: dict, end: dict, cores: int) -> bool:
    """True when other processes competed for the cores during the run (busy at either end, or high load)."""
    if start["busy_processes"] or end["busy_processes"]:
        return True
    return max(start["loadavg"][0], end["loadavg"][0]) > cores * (1 + SHARED_LOAD_MARGIN)


def machine_info(threads: int) -> dict:
    """Static facts of the machine and libraries, plus the thread count the benchmark uses."""
    return {
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": cpu_info(),
        "gpus": gpu_info(),
        "libraries": library_versions(),
        "threads": threads,
        "blas_env": {k: os.environ[k] for k in BLAS_ENV if k in os.environ},
    }


def default_threads() -> int:
    return cpu_info()["usable_cores"] or 1


def recorded(kind: str, threads: int, body: Callable[[], dict]) -> dict:
    """Run a benchmark and wrap its results with what makes them readable: the command, the machine,
    and the load at the start and the end."""
    start = load_snapshot()
    results = body()
    end = load_snapshot()
    return {
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["zscir-bench", *sys.argv[1:]]),
        "machine": machine_info(threads),
        "load": {"start": start, "end": end, "shared": was_shared(start, end, threads)},
        **results,
    }
