"""Property tests: schemathesis drives every operation of the OpenAPI schema against the
live server (real uvicorn + Redis): no 5xx, and every response matches the schema."""

from __future__ import annotations

import pytest
import schemathesis
from api_helpers import ALICE, ThreadServer
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)


@pytest.fixture
def fuzz_server(settings):
    from api.main import create_app

    app = create_app(settings)
    srv = ThreadServer(app).start()
    app.state.launcher.launch = lambda *a, **kw: None  # jobs stay queued: no trainer processes
    yield srv
    srv.stop()


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_every_operation_conforms(fuzz_server):
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    headers = {"Authorization": f"Bearer {ALICE}"}
    tested = []
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy())
        @hsettings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(base_url=fuzz_server.url, headers=headers, checks=CHECKS, timeout=10)

        check()
        tested.append(op.label)
    assert len(tested) == 23, tested  # 22 + GET /v1/studies/{id}/report.html
