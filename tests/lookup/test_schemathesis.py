"""Generated requests against the service's own OpenAPI document: never a server error.

Each operation is exercised twice per example: as generated (mostly refused at the door), and
with a valid consumer token added, so the generated ids, identifiers, keys and case numbers reach
the lookups themselves. Schemathesis's pytest plugin is not used: it does not yet run under this
pytest version, so each operation's strategy is driven by Hypothesis directly.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from .conftest import Desk


def test_no_server_error(desk: Desk) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", desk.client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert sorted(op.label for op in operations) == [
        "GET /v1/certificates",
        "GET /v1/certificates/{identifier}",
        "GET /v1/resources/{code}/records",
        "GET /v1/signing-key",
    ]
    calls: list[int] = []

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def run(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call()
            assert response.status_code < 500, (case.path, response.text)

            headers = dict(case.headers or {})
            headers["Authorization"] = f"Bearer {desk.token}"
            headers.setdefault("X-Case-Number", "2026-0001")
            response = case.call(headers=headers)
            assert response.status_code < 500, (case.path, response.text)
            if response.status_code >= 400:
                assert response.json()["reason"]
            calls.append(response.status_code)

        run()
    assert len(calls) > 40
