"""Generated requests against the API's own OpenAPI document (schemathesis), in process on the real
database: whatever arrives, the API answers without a server error, and every error is a problem+json
with a stable code. Jobs it accepts go to this run's Redis key prefix; no worker runs them."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from api.app import create_app
from tests.scenarios import build_salon

EXAMPLES = 20  # per operation and mode


@pytest.fixture
def salon(db):
    return build_salon(db, with_api_key=True)


def test_any_request_gets_an_answer_or_a_problem_never_a_server_error(db, redis_prefix, salon):
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    checked = 0
    # Valid requests, then requests that break the schema on purpose (wrong types, missing fields...).
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for operation in operations:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,  # the same requests on every run: a failure is a defect, not bad luck
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def answers_without_a_server_error(case):
                response = case.call(headers={"Authorization": f"Bearer {salon.api_key}"})
                assert response.status_code < 500, (case.method, case.formatted_path, response.text)
                if response.status_code >= 400:
                    assert response.headers["content-type"] == ["application/problem+json"], response.text
                    problem = response.json()
                    assert problem["status"] == response.status_code and problem["code"] and problem["detail"]

            try:
                answers_without_a_server_error()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # an operation without inputs has nothing to break
                continue
            checked += 1
    assert checked >= len(operations) + 6  # every operation valid, and most of them broken
