"""Schemathesis over the whole OpenAPI schema, bounded: no 5xx but a documented 503, responses match the schema.

The served schema carries the loaded model's own bounds (api/openapi.py), so data generated as valid
must be accepted: a positive /predict or /jobs case is answered 200/202 (or 429/503 when the small queue
is full), except where a rule cannot be said in JSON Schema (base64 that decodes to audio, a query
client_job_id that differs from the body's); those get a 422 naming the field, checked separately.
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


GENERATE = {("POST", "/predict"), ("POST", "/jobs")}
ACCEPTED = Counter()


def _expressible(case) -> bool:
    """Positive data whose validity JSON Schema can state (no uploads, no long-form window fields, whose validity
    depends on the duration, no conflicting client_job_id)."""
    body = case.body if isinstance(case.body, dict) else {}
    cross_field = ("init_audio_b64", "inpaint_audio_b64", "inpaint_regions", "init_noise_level")
    cross_field += ("window_s", "overlap_s")
    if any(k in body for k in cross_field):
        return False
    query = (case.query or {}).get("client_job_id")
    return query is None or body.get("client_job_id") in (None, query)


def _check(response, case, mode=None) -> None:
    code = response.status_code
    OUTCOMES[code] += 1
    assert code < 500 or (code == 503 and response.headers.get("retry-after")), (
        f"{case.method} {case.formatted_path} -> {code}: {response.text[:300]}"
    )
    assert "Traceback" not in response.text
    if code == 200 or code == 202 or 400 <= code < 500:
        case.validate_response(response, excluded_checks=[positive_data_acceptance])
    if mode == GenerationMode.POSITIVE and (case.method.upper(), case.path) in GENERATE and _expressible(case):
        ACCEPTED[code in (200, 202, 429, 503)] += 1
        assert code in (200, 202, 429, 503), f"valid by the schema but refused: {code} {response.text[:300]}"


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
            _check(response, case, mode)
            if response.status_code == 202:  # keep the queue from filling with fuzz jobs
                engine.cancel(response.json()["id"])

        try:
            run()
        except Unsatisfiable:  # nothing to make invalid (an operation without inputs)
            assert mode == GenerationMode.NEGATIVE
            continue
        total += budget
    record("Fuzzing (schemathesis, OpenAPI schema)", f"{mode.value} cases, all operations (upper bound)", total)
    if mode == GenerationMode.POSITIVE:
        assert ACCEPTED[True] > 0  # the positive pass did generate schema-expressible requests
        record(
            "Fuzzing (schemathesis, OpenAPI schema)",
            "positive /predict and /jobs cases the schema can fully express: accepted",
            f"{ACCEPTED[True]} of {ACCEPTED[True] + ACCEPTED[False]}",
        )
    record(
        "Fuzzing (schemathesis, OpenAPI schema)",
        f"status codes after the {mode.value} pass",
        ", ".join(f"{k}: {v}" for k, v in sorted(OUTCOMES.items())),
    )
