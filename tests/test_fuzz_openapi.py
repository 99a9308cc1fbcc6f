"""Fuzzing the server through its own OpenAPI document with schemathesis (in-process ASGI transport).

Schemathesis reads ``/openapi.json`` and generates requests for every operation under
``/personalizer/v1.1-preview.3/`` and the ``?api-version=`` paths, both fitting the schema
(positive) and breaking it (negative). Every answer must be below 500 and carry
Personalizer's error body when it is an error, and a rejected call (4xx) must change
nothing: counts, settings, model lineage and the evaluations list stay as they were.

Bounded and repeatable: a fixed number of examples, derandomized (a fixed seed derived
from the test), no example database. The test asserts how many cases ran and how many
operations they covered, so it cannot pass by generating nothing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from server_fixtures import KEY, rank_request

from personalizer.engine import LocalPersonalizer
from personalizer.server import create_app

pytestmark = pytest.mark.slow  # subprocesses and generated cases: a few seconds each

EXAMPLES = 60
MIN_OPERATIONS = 10
# Everything but the older versioned prefixes (they serve the same handlers as v1.1-preview.3).
PATHS = r"^/personalizer/(?!v1\.0/|v1\.1-preview\.[12]/)"
# A 409 for a late reward is documented to log the reward (as late) while refusing it.
STATEFUL_REFUSALS = {409}


def _state(engine: LocalPersonalizer, app: Any) -> tuple[Any, ...]:
    stats = engine.stats()
    evaluations = sorted(e["id"] for e in app.state.evaluations.list(api_version="v1.1-preview.1"))
    return (stats, engine.get_service_configuration(), engine.get_policy(), engine.model_properties(),
            engine.log_properties(), evaluations)


def test_openapi_fuzzing_never_5xx_and_rejected_calls_change_nothing(tmp_path: Path) -> None:
    engine = LocalPersonalizer(tmp_path / "data")
    app = create_app(engine, key=KEY)
    try:
        for i in range(3):  # a log with learned events, so evaluations and log calls have something to read
            answer = engine.rank(rank_request(f"seed-{i}"))
            engine.reward(answer["eventId"], {"reward": [{"slotId": s["id"], "value": 1.0} for s in answer["slots"]]})
        schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(path_regex=PATHS)
        auth = {"Ocp-Apim-Subscription-Key": KEY}  # fixed: fuzz the API, not the key check (tested elsewhere)
        cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE, headers=auth),
                          schema.as_strategy(GenerationMode.NEGATIVE, headers=auth))
        statuses: Counter[int] = Counter()
        operations: set[str] = set()
        failures: list[str] = []

        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=cases)
        def call(case: Any) -> None:
            before = _state(engine, app)
            response = case.call(headers=auth)
            statuses[response.status_code] += 1
            operations.add(f"{case.method} {case.path}")
            where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.content[:200]!r}"
            if response.status_code >= 500:
                failures.append(where)
            elif response.status_code >= 400:
                body = response.json()
                if set(body.get("error", {})) != {"code", "message"}:
                    failures.append(f"not a Personalizer error body: {where}")
                if response.status_code not in STATEFUL_REFUSALS and _state(engine, app) != before:
                    failures.append(f"a rejected call changed state: {where}")

        call()
    finally:
        app.state.engine_calls.close()  # no lifespan ran (schemathesis calls the app directly)
        app.state.evaluations.close()
        engine.close()
    print(f"fuzzing: {sum(statuses.values())} cases over {len(operations)} operations, statuses {dict(statuses)}")
    assert not failures, "\n".join(failures[:10])
    ran = sum(statuses.values())
    assert ran >= EXAMPLES, f"only {ran} cases ran"
    assert len(operations) >= MIN_OPERATIONS, sorted(operations)
    assert any(400 <= s < 500 for s in statuses), statuses  # the negative cases reached the validation
