"""The server on FastAPI's public machinery: typed routes, FastAPI's own OpenAPI document, and
our decoder and error codes behind both.

Typed routes must not let FastAPI's generic answers through (422s, "There was an error parsing
the body"): bodies are decoded by ``contract.loads`` and validation errors carry the codes the
engine and the managers use. The document is ``FastAPI.openapi`` itself, not a replacement.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import requests
from fastapi import FastAPI
from server_fixtures import HEADERS, KEY, ThreadedServer

from personalizer.contract import (
    EvaluationContract,
    PersonalizerError,
    ServiceConfiguration,
    parse,
    parse_duration,
)
from personalizer.server_routes import (
    ContractRoute,
    admin,
    api_version_only,
    evaluations_v1,
    hot_multislot,
    hot_single,
    multislot_extras,
)

V3 = "/personalizer/v1.1-preview.3"
SDK_Q = "?api-version=2022-09-01-preview"
GROUPS = (hot_multislot, hot_single, admin, multislot_extras, evaluations_v1, api_version_only)


def error_of(resp: requests.Response) -> tuple[int, str, str]:
    body = resp.json()
    assert resp.headers["x-ms-error-code"] == body["error"]["code"]
    return resp.status_code, body["error"]["code"], body["error"]["message"]


def put(server: ThreadedServer, path: str, data: bytes | str, **headers: str) -> requests.Response:
    return requests.put(server.base + path, data=data, headers={**HEADERS, **headers}, timeout=30)


def test_typed_bodies_are_decoded_by_our_decoder(live_server: ThreadedServer) -> None:
    policy = f"{V3}/configurations/policy"
    deep = "[" * 100_000 + "]" * 100_000  # json.loads alone raises RecursionError here
    status, code, message = error_of(put(live_server, policy, deep))
    assert (status, code) == (400, "BadRequest") and "error parsing the body" not in message
    status, code, message = error_of(put(live_server, policy, '{"name": "\\ud800", "arguments": "--epsilon 0.1"}'))
    assert (status, code) == (400, "BadRequest") and "surrogate" in message
    status, code, message = error_of(put(live_server, policy, b""))
    assert (status, code) == (400, "BadRequest") and "empty" in message
    assert error_of(put(live_server, policy, "{}", **{"Content-Type": "text/plain"}))[:2] == (
        415, "UnsupportedMediaType")
    status, code, message = error_of(put(live_server, policy, "[1, 2]"))
    assert (status, code) == (400, "InvalidPolicyContract") and "JSON object" in message


@pytest.mark.parametrize(("path", "body", "code", "named"), [
    (f"{V3}/configurations/service", '{"rewardWaitTime": "PT1S"}', "InvalidServiceConfiguration", "rewardWaitTime"),
    (f"{V3}/configurations/service", '{"modelExportFrequency": "P99999999999999999999D"}',
     "InvalidServiceConfiguration", "modelExportFrequency"),
    (f"{V3}/configurations/policy", '{"name": "x"}', "InvalidPolicyContract", "arguments"),
    (f"/personalizer/evaluations/e1{SDK_Q}", '{"name": "e", "startTime": "2026-01-02", "endTime": "2026-01-01"}',
     "InvalidEvaluationContract", "endTime"),
    (f"/personalizer/evaluations/e1{SDK_Q}",
     '{"name": "e", "startTime": "2026-01-01", "endTime": "2026-01-02", "policies": [{"name": "p"}]}',
     "InvalidPolicyContract", "policies[0].arguments"),
    (f"/personalizer/featureImportances/f1{SDK_Q}", '{"name": "f"}', "InvalidContract", "startTime"),
])
def test_validation_errors_carry_the_contracts_codes(live_server: ThreadedServer, path: str, body: str, code: str,
                                                      named: str) -> None:
    before = requests.get(f"{live_server.base}{V3}/configurations/service", headers=HEADERS, timeout=10).json()
    status, got, message = error_of(put(live_server, path, body))
    assert (status, got) == (400, code) and named in message, message
    after = requests.get(f"{live_server.base}{V3}/configurations/service", headers=HEADERS, timeout=10).json()
    assert after == before


def test_query_and_api_version_errors_are_bad_requests(live_server: ThreadedServer) -> None:
    get = lambda path: requests.get(live_server.base + path, headers=HEADERS, timeout=10)  # noqa: E731
    status, code, message = error_of(get(f"{V3}/configurations/policy/history?top=0"))
    assert (status, code) == (400, "BadRequest") and message.startswith("top:")
    status, code, message = error_of(get("/personalizer/configurations/policy"))
    assert (status, code) == (400, "BadRequest") and "api-version query parameter is required" in message
    status, code, message = error_of(get("/personalizer/configurations/policy?api-version=2019-01-01"))
    assert (status, code) == (400, "BadRequest") and "not supported" in message
    assert get(f"/personalizer/configurations/policy{SDK_Q}").status_code == 200


def test_the_document_is_fastapis_own(live_server: ThreadedServer) -> None:
    app = live_server._server.config.app  # the app uvicorn serves
    assert isinstance(app, FastAPI) and "openapi" not in vars(app)  # no replacement of FastAPI.openapi
    routes = [r for group in GROUPS for r in group.routes]
    assert len(routes) >= 30 and all(isinstance(r, ContractRoute) for r in routes)  # FastAPI's, not a replaced app
    doc = requests.get(f"{live_server.base}/openapi.json", timeout=10).json()
    assert doc == app.openapi()
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # errors are 400s, never FastAPI's 422
    schemes = doc["components"]["securitySchemes"]
    assert schemes == {"apim_key": {"type": "apiKey", "in": "header", "name": "Ocp-Apim-Subscription-Key"}}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if path.endswith("/model") and method == "put":
                assert "application/octet-stream" in op["requestBody"]["content"]
            elif "requestBody" in op:
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], (path, method)
            assert "422" not in op["responses"], (path, method)
            if "health" not in path:
                assert op["security"] == [{"apim_key": []}], (path, method)
                assert op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
                    "/ErrorResponse")
    assert requests.get(f"{live_server.base}{V3}/stats", headers={"Ocp-Apim-Subscription-Key": KEY},
                        timeout=10).status_code == 200


@pytest.mark.parametrize(("text", "expected"), [
    ("PT10M", timedelta(minutes=10)), ("P1DT2H", timedelta(days=1, hours=2)), ("PT1.5S", timedelta(seconds=1.5)),
    ("00:01:00", timedelta(minutes=1)), ("P3650D", timedelta(days=3650)),
])
def test_durations_are_read_by_pydantic_and_kept_as_sent(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    config = ServiceConfiguration.model_validate({"modelExportFrequency": text})
    assert config.model_dump(by_alias=True)["modelExportFrequency"] == text  # round trip: the text as sent


@pytest.mark.parametrize("text", ["P3651D", "P99999999999999999999D", "-PT1M", "ten minutes", "P", "PT", "", 60])
def test_durations_out_of_bounds_or_malformed_are_value_errors(text: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_the_evaluation_contract_is_the_managers_rules() -> None:
    ok = {"name": "e", "startTime": 1_700_000_000, "endTime": "2026-01-01T00:00:00"}
    contract = parse(EvaluationContract, ok, "InvalidEvaluationContract")
    assert contract.start_time.tzinfo is not None and contract.create_arguments()["policies"] == []
    for bad, code in [({**ok, "name": " "}, "InvalidEvaluationContract"),
                      ({**ok, "startTime": 1e308}, "InvalidEvaluationContract"),
                      ({**ok, "enableOfflineExperimentation": "yes"}, "InvalidEvaluationContract"),
                      ({**ok, "policies": [{"name": "p", "arguments": 3}]}, "InvalidPolicyContract"),
                      ({**ok, "policies": ["p"]}, "InvalidEvaluationContract")]:
        with pytest.raises(PersonalizerError) as info:
            parse(EvaluationContract, bad, "InvalidEvaluationContract")
        assert info.value.code == code, (bad, info.value)
