"""`zscir-infer serve` as a real process (uvicorn on loopback): SIGTERM drains the requests in flight and
exits 0; SIGKILL during adds leaves a gallery whose every item is whole."""

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
import httpx  # noqa: E402

from tests.fixtures.gallery import write_image  # noqa: E402
from tests.test_serve_api import served  # noqa: E402,F401 (module fixture: a tiny indexed gallery)
from zscir_infer.gallery import Gallery  # noqa: E402

STARTUP_S = 60
TOKEN = "process-test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(served, *options, gallery=None, token_file=None):  # noqa: F811
    """`zscir-infer serve` on a free loopback port, once /readyz answers -> (process, base URL)."""
    port = free_port()
    cmd = [sys.executable, "-m", "zscir_infer.cli", "serve", "--bundle", str(served["bundle"]), "--gallery",
           str(gallery or served["gallery"]), "--port", str(port), "--log-level", "warning", *options]
    if token_file:
        cmd += ["--token-file", str(token_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not become ready")


def test_sigterm_drains_requests_in_flight_and_exits_0(served):  # noqa: F811
    # a batch that waits 3 s for company keeps every request in flight when SIGTERM arrives
    proc, base = start(served, "--max-batch", "64", "--max-wait-ms", "3000")
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(httpx.post, f"{base}/v1/search", data={
                "reference": served["names"][i], "text": "as a sketch", "k": "3"}, timeout=30) for i in range(8)]
            deadline = time.monotonic() + 20
            while "zscir_in_flight_requests 8.0" not in httpx.get(f"{base}/metrics").text:
                assert time.monotonic() < deadline, "the 8 requests never were in flight together"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            responses = [f.result() for f in futures]
        assert [r.status_code for r in responses] == [200] * 8
        assert all(len(r.json()["results"]) == 3 for r in responses)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigkill_during_adds_never_half_adds_an_item(served, tmp_path):  # noqa: F811
    import shutil

    gallery = tmp_path / "gallery"
    shutil.copytree(served["gallery"], gallery)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    n_before = Gallery.open(gallery).count
    images = [write_image(tmp_path / "new" / f"n{i:03d}.png", 500 + i) for i in range(60)]
    proc, base = start(served, "--writable", gallery=gallery, token_file=token_file)
    sent = []
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
            for i, path in enumerate(images):
                if i == 25:
                    proc.send_signal(signal.SIGKILL)  # mid-stream: whatever request is running dies with it
                try:
                    r = c.post("/v1/gallery/images", files={"images": (path.name, path.read_bytes(), "image/png")})
                except httpx.TransportError:
                    break
                assert r.status_code == 200, r.text
                sent.append(path.name)
    finally:
        proc.kill()
        proc.wait()
    with Gallery.open(gallery) as g:
        added = [item for item in g.all_items() if item.name.startswith("uploads/")]
        assert g.count == n_before + len(added) and len(added) >= len(sent) >= 20
        assert all(os.path.getsize(item.path) > 0 for item in added)
        assert g.features().shape == (g.count, g.embed_dim)
    # a restarted server resumes: what was added answers 409, the rest is added
    proc, base = start(served, "--writable", gallery=gallery, token_file=token_file)
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
            codes = [c.post("/v1/gallery/images", files={"images": (p.name, p.read_bytes(), "image/png")}).status_code
                     for p in images]
        assert codes == [409] * len(added) + [200] * (len(images) - len(added))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_several_workers_serve_the_same_read_only_gallery(served):  # noqa: F811
    proc, base = start(served, "--workers", "2")
    try:
        answers = [httpx.post(f"{base}/v1/search", data={"reference": served["names"][i], "text": "x", "k": "2"},
                              timeout=30) for i in range(6)]
        assert [r.status_code for r in answers] == [200] * 6
        added = httpx.post(f"{base}/v1/gallery/images", files={"images": ("a.png", b"x", "image/png")}, timeout=30)
        assert added.status_code == 409  # read-only: a gallery has one writer
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
