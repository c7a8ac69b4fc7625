"""Schemathesis over the whole OpenAPI schema, bounded: no 5xx but a documented 503, responses match the schema.

One default check is off: `positive_data_acceptance`, because some rules cannot be said in JSON Schema
(a region's end after its start, base64 that decodes to audio, the loaded model's own limits); those
requests get a 422 naming the field, which the other checks still verify against the schema.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from stable_audio_service.config import Settings

from .conftest import serve
from .reliability_report import record

# Examples per operation and mode. /predict runs the model when the input is valid, so its
# positive examples stay few; negative examples are rejected before the model and are cheap.
BUDGET = {
    ("POST /predict", GenerationMode.POSITIVE): 4,
    ("POST /predict", GenerationMode.NEGATIVE): 80,
    ("POST /jobs", GenerationMode.POSITIVE): 25,
    ("POST /jobs", GenerationMode.NEGATIVE): 60,
}
DEFAULT_BUDGET = 20
OUTCOMES: Counter = Counter()


@pytest.fixture(scope="module")
def fuzz_client(tiny_dir):
    # a small queue and few steps' worth of waiting keep valid-but-slow requests bounded
    c = serve(Settings(model=str(tiny_dir), queue_size=2, queue_timeout_s=5, window="fit"))
    yield c
    engine = c.app.state.service.engine
    for job in list(engine._jobs.values()):
        engine.cancel(job.id)
    c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def operations(fuzz_client):
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_client.app)
    ops = {}
    for result in schema.get_all_operations():
        op = result.ok()
        if "/events" in op.path:  # an endless stream by design; covered in test_engine
            continue
        ops[f"{op.method.upper()} {op.path}"] = op
    return ops


def _check(response, case) -> None:
    code = response.status_code
    OUTCOMES[code] += 1
    assert code < 500 or (code == 503 and response.headers.get("retry-after")), (
        f"{case.method} {case.formatted_path} -> {code}: {response.text[:300]}"
    )
    assert "Traceback" not in response.text
    if code == 200 or code == 202 or 400 <= code < 500:
        case.validate_response(response, excluded_checks=[positive_data_acceptance])


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_fuzz_every_operation(fuzz_client, operations, mode):
    assert {"POST /predict", "POST /jobs", "GET /health", "GET /models"} <= set(operations)
    engine = fuzz_client.app.state.service.engine
    total = 0
    for label, op in sorted(operations.items()):
        budget = BUDGET.get((label, mode), DEFAULT_BUDGET)

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=budget,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            response = fuzz_client.request(**case.as_transport_kwargs(base_url="http://testserver"))
            _check(response, case)
            if response.status_code == 202:  # keep the queue from filling with fuzz jobs
                engine.cancel(response.json()["id"])

        try:
            run()
        except Unsatisfiable:  # nothing to make invalid (an operation without inputs)
            assert mode == GenerationMode.NEGATIVE
            continue
        total += budget
    record("Fuzzing (schemathesis, OpenAPI schema)", f"{mode.value} cases, all operations (upper bound)", total)
    record(
        "Fuzzing (schemathesis, OpenAPI schema)",
        f"status codes after the {mode.value} pass",
        ", ".join(f"{k}: {v}" for k, v in sorted(OUTCOMES.items())),
    )
