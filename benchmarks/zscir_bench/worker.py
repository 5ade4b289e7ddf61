"""One measurement in a process of its own: `python -m MODULE REQUEST RESULT`, JSON files in and out.

The latency benchmark runs each backend this way (the runtime's process never imports torch, and a
provider that crashes costs its own figures only), the load benchmark each thread configuration (its
environment, e.g. OMP_WAIT_POLICY, must be set before torch loads). The worker module's `__main__` calls
`serve(argv, measure)`; the parent calls `run_worker`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from zscir_infer.atomic import atomic_write_json

ERROR_LINES = 5  # last stderr lines of a failed worker kept as the reason


def run_worker(module: str, request: dict, folder: Path, name: str, say: Callable[[str], None], *,
               env: dict[str, str] | None = None, timeout_s: float | None = None,
               echo: Callable[[str], bool] = lambda _line: True) -> tuple[dict | None, str]:
    """(result, "") from `python -m module` run on `request`, or (None, why it failed: exit code or signal
    and its last stderr lines). Its stderr lines that `echo` accepts go to `say` as they come; after
    timeout_s it is killed."""
    request_file, result_file = folder / f"{name}.request.json", folder / f"{name}.result.json"
    atomic_write_json(request_file, request)
    command = [sys.executable, "-m", module, str(request_file), str(result_file)]
    tail: deque[str] = deque(maxlen=ERROR_LINES)
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) as worker:
        timer = threading.Timer(timeout_s, worker.kill) if timeout_s else None
        if timer:
            timer.start()
        try:
            for line in worker.stderr:
                tail.append(line.rstrip())
                if echo(line):
                    say(line.rstrip())
            code = worker.wait()
        finally:
            if timer:
                timer.cancel()
    if code != 0 or not result_file.is_file():
        crash = f" (signal {-code})" if code < 0 else f" (exit code {code})"
        return None, f"the measurement failed{crash}: " + " | ".join(tail)
    return json.loads(result_file.read_text()), ""


def serve(argv: list[str], measure: Callable[[dict], dict]) -> None:
    """The worker's side: read the request file, measure, write the result file atomically."""
    request_file, result_file = (Path(a) for a in argv)
    atomic_write_json(result_file, measure(json.loads(request_file.read_text())))


def progress_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
