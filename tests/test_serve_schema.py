"""schemathesis against the server's own OpenAPI spec: whatever it sends, no answer is a 5xx."""

import pytest

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests.test_serve_api import served  # noqa: E402,F401 (the module fixture: a tiny indexed gallery)
from zscir_infer.serve import ServeConfig, create_app  # noqa: E402

TOKEN = "schemathesis-token-0123456789abcdef"


@pytest.fixture(scope="module")
def api_schema(served):  # noqa: F811
    app = create_app(ServeConfig(bundle=served["bundle"], gallery=served["gallery"], token=TOKEN, max_batch=4))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_input_gets_a_server_error(api_schema):
    """Every operation of /openapi.json, with generated valid and invalid inputs (schemathesis's own
    pytest plugin does not load under this pytest, so the operations are walked here)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/search", "/v1/embeddings", "/v1/gallery/images", "/admin/reload"}
    seen = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call()
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}")
            if response.status_code >= 400 and "json" in response.headers.get("content-type", [""])[0]:
                assert "error" in response.json()

        check()
    assert any(code >= 400 for code in seen) and any(code < 300 for code in seen), seen
