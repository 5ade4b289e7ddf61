"""`--backend openvino`: the bundle's ONNX graphs on OpenVINO equal ONNX Runtime's, for every method,
precision and thread that calls them; wrong devices are refused."""

import threading

import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed (the [openvino] extra)")

from tests.fixtures.gallery import write_image  # noqa: E402
from zscir_infer import Runtime  # noqa: E402
from zscir_infer.backends import BackendError  # noqa: E402
from zscir_infer.contract import METHODS  # noqa: E402

TEXTS = ["as a sketch", "make it red and much larger, with a dog", "x"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("ov")
    return [write_image(root / f"im{i}.png", i, size=(40 + 7 * i, 33 + i)) for i in range(3)]


@pytest.mark.parametrize("precision, tol", [("fp32", 1e-5), ("fp16", 2e-3), ("int8", 2e-2)])
def test_openvino_equals_onnx_runtime_for_every_method(tiny_bundle, images, precision, tol):
    ort, ov = Runtime(tiny_bundle, precision=precision), Runtime(tiny_bundle, "openvino", precision=precision)
    assert all(p[0].startswith("OpenVINO") for p in ov.providers_used().values())
    for method in METHODS:
        a = ort.encode_queries(list(zip(images, TEXTS, strict=True)), method=method)
        b = ov.encode_queries(list(zip(images, TEXTS, strict=True)), method=method)
        cos = np.sum(a * b, axis=1)
        assert cos.min() >= 1 - tol, (method, cos)
    np.testing.assert_allclose(ov.encode_images(images), ort.encode_images(images), atol=tol * 10)


def test_threads_share_one_openvino_session(tiny_bundle, images):
    """Each thread gets its own infer request: concurrent calls give each caller its own answer."""
    ov = Runtime(tiny_bundle, "openvino")
    expected = [ov.encode_texts([t]) for t in TEXTS]
    got, errors = {}, []

    def work(i):
        try:
            for _ in range(20):
                got.setdefault(i, []).append(ov.encode_texts([TEXTS[i % 3]]))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i, outs in got.items():
        for out in outs:
            np.testing.assert_allclose(out, expected[i % 3], atol=1e-6)


def test_openvino_on_a_gpu_device_is_refused(tiny_bundle):
    with pytest.raises(BackendError, match="openvino backend runs on the CPU"):
        Runtime(tiny_bundle, "openvino", device="cuda")
