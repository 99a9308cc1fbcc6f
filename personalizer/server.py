"""The HTTP face of the engine: a Personalizer-compatible REST server (FastAPI + uvicorn).

One shared ``LocalPersonalizer`` answers every route of the retired service's
contract under each base path its clients used:

- ``/personalizer/v1.1-preview.1/``, ``v1.1-preview.2/``, ``v1.1-preview.3/``
  (the seed quickstart and other multi-slot apps);
- ``/personalizer/...?api-version=2022-09-01-preview`` (the official Python SDK
  ``azure-ai-personalizer``); a missing or unknown ``api-version`` is a 400;
- ``/personalizer/v1.0/`` (single-slot apps; no multi-slot routes there).

Errors always carry Personalizer's body ``{"error": {"code", "message"}}`` (and
an ``x-ms-error-code`` header, as the service sent). Requests are checked in an
order that makes a rejected request change nothing: key, body size, content
type, JSON, then the engine's own validation before it touches any state.

Hot-path handlers (rank, reward, activate) call the engine inline on the event
loop: the engine serialises on one lock anyway, and a thread hop per request
cost about 0.3 ms more server CPU per request than it bought. Slow administrative calls
(model export/import, policy changes, log deletion, evaluations) run in the thread pool so
they do not stall the loop.

Offline evaluations (``personalizer.evaluation.Evaluations``, one manager per app,
closed with it) run on the manager's background thread: create answers at once with
the evaluation pending, and GET shows it pending until it completes. Their shapes
follow the path: v1.x paths (POST to create, 201 + Location) answer the
v1.1-preview.1 ``Evaluation``; ``/personalizer/...?api-version=2022-09-01-preview``
(PUT /evaluations/{id} to create, 200; list as ``{"value", "nextLink"}``) the 2022 one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .contract import (
    ErrorResponse,
    FeatureImportance,
    FeatureImportanceContract,
    FeatureImportances,
    LogsProperties,
    ModelProperties,
    MultiSlotRankRequest,
    MultiSlotRankResponse,
    MultiSlotRewardRequest,
    PersonalizerError,
    PolicyContract,
    RankRequest,
    RankResponse,
    RewardRequest,
    ServiceConfiguration,
)

if TYPE_CHECKING:  # the manager loads Vowpal Wabbit; create_app imports it when an app is built
    from .evaluation import Evaluations
    from .importance import FeatureImportances

__all__ = [
    "API_VERSIONS",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_MODEL_BYTES",
    "KEY_HEADER",
    "VERSIONED_PREFIXES",
    "create_app",
    "serve",
]

logger = logging.getLogger(__name__)

KEY_HEADER = "Ocp-Apim-Subscription-Key"
#: ``api-version`` values the unversioned ``/personalizer/...`` paths accept (from the published contract).
API_VERSIONS = ("2022-09-01-preview",)
#: Versioned base paths; ``v1.0`` predates multi-slot and serves single-slot and admin routes only.
VERSIONED_PREFIXES = ("v1.1-preview.1", "v1.1-preview.2", "v1.1-preview.3", "v1.0")
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_MODEL_BYTES = 256 * 1024 * 1024
#: Response header carrying the engine's receipt for 204 answers (reward/activate status, logs deleted).
STATUS_HEADER = "x-personalizer-status"
DELETED_HEADER = "x-personalizer-deleted"

_KEY_HEADER_BYTES = KEY_HEADER.lower().encode()
_OPEN_PATHS = frozenset({"/health", "/personalizer/health", "/openapi.json", "/docs", "/docs/oauth2-redirect"})
_JSON = "application/json"
_STATUS_CODES = {400: "BadRequest", 401: "Unauthorized", 404: "ResourceNotFound", 405: "OperationNotAllowed",
                 409: "Conflict", 413: "PayloadSizeExceeded", 415: "UnsupportedMediaType",
                 429: "TooManyRequests", 500: "InternalServerError", 501: "OperationNotAllowed",
                 503: "ServiceUnavailable"}
# Contract operations this server does not implement (feature importances, log exports): a clear 501.
_UNSUPPORTED = ("/logs/interactions", "/logs/observations")
#: Route tag of the unversioned paths (``?api-version=...``); the versioned ones are tagged by their version.
_API_VERSION_TAG = "api-version"
# The evaluations manager's names for the two wire shapes of an evaluation: every v1.x path
# (v1.0 .. v1.1-preview.3) answers the v1.1-preview.1 one (evaluation.API_V1, evaluation.API_2022).
_V1_SHAPE = "v1.1-preview.1"
_2022_SHAPE = API_VERSIONS[0]


# ---------------------------------------------------------------- responses

def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _json(obj: Any, status: int = 200) -> Response:
    return Response(_dumps(obj), status_code=status, media_type=_JSON)


def error_response(exc: PersonalizerError, headers: dict[str, str] | None = None) -> Response:
    """A Personalizer error body with its status and the service's ``x-ms-error-code`` header."""
    return Response(_dumps(exc.to_body()), status_code=exc.status, media_type=_JSON,
                    headers={"x-ms-error-code": exc.code, **(headers or {})})


async def _send_error(send: Send, exc: PersonalizerError) -> None:
    """Send an error straight from the ASGI layer (before routing)."""
    body = _dumps(exc.to_body())
    await send({"type": "http.response.start", "status": exc.status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-ms-error-code", exc.code.encode())]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- request bodies

def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _json_body(request: Request) -> Any:
    """The request's JSON value; 415 unless the content type is JSON, 400 unless it parses."""
    media = _media_type(request)
    if media != _JSON and not (media.startswith("application/") and media.endswith("+json")):
        shown = media or "none"
        raise PersonalizerError("UnsupportedMediaType",
                                f"Content-Type must be application/json, not {shown}", 415)
    body = await request.body()
    if not body.strip():
        raise PersonalizerError("BadRequest", "the request body is empty; send a JSON object", 400)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise PersonalizerError("BadRequest", f"the request body is not valid JSON: {_short(exc)}", 400) from None


async def _binary_body(request: Request) -> bytes:
    media = _media_type(request)
    if media not in ("", "application/octet-stream"):
        raise PersonalizerError("UnsupportedMediaType",
                                f"Content-Type must be application/octet-stream, not {media}", 415)
    return await request.body()


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


# ---------------------------------------------------------------- operations

Handler = Callable[[Any, Request, str], Awaitable[Response]]


@dataclass(frozen=True)
class _Operation:
    """One contract operation: where it lives, what it takes and answers (for routing and OpenAPI)."""

    name: str
    method: str
    path: str
    handler: Handler
    status: int
    summary: str
    response_model: Any = None
    request_model: Any = None
    binary_body: bool = False
    binary_response: bool = False
    multislot: bool = False
    #: Route tags (versions, or ``api-version``) serving the operation; None: all (v1.0 aside for multi-slot).
    served: tuple[str, ...] | None = None
    #: The handler gets the app's ``Evaluations`` manager instead of the engine.
    evaluations: bool = False
    #: The path parameter passed to the handler as its third argument.
    path_param: str = "eventId"
    #: Documented query parameters: (name, JSON type, description).
    query: tuple[tuple[str, str, str], ...] = ()


def _receipt(receipt: dict[str, Any] | None) -> Response:
    status = (receipt or {}).get("status")
    return Response(status_code=204, headers={STATUS_HEADER: str(status)} if status else None)


async def _rank(engine: Any, request: Request, _: str) -> Response:
    body = await _json_body(request)
    if _flag(request, "explain"):  # extension: why each slot got its action (never computed unless asked)
        return _json(engine.rank(body, explain=True), 201)
    return _json(engine.rank(body), 201)


async def _reward(engine: Any, request: Request, event_id: str) -> Response:
    return _receipt(engine.reward(event_id, await _json_body(request)))


async def _activate(engine: Any, request: Request, event_id: str) -> Response:
    return _receipt(engine.activate(event_id))


async def _rank_single(engine: Any, request: Request, _: str) -> Response:
    return _json(engine.rank_single(await _json_body(request)), 201)


async def _reward_single(engine: Any, request: Request, event_id: str) -> Response:
    return _receipt(engine.reward_single(event_id, await _json_body(request)))


async def _get_config(engine: Any, request: Request, _: str) -> Response:
    return _json(engine.get_service_configuration())


async def _put_config(engine: Any, request: Request, _: str) -> Response:
    body = await _json_body(request)
    return _json(await run_in_threadpool(engine.update_service_configuration, body))


async def _get_policy(engine: Any, request: Request, _: str) -> Response:
    return _json(engine.get_policy())


async def _put_policy(engine: Any, request: Request, _: str) -> Response:
    body = await _json_body(request)
    return _json(await run_in_threadpool(engine.update_policy, body))


async def _reset_policy(engine: Any, request: Request, _: str) -> Response:
    return _json(await run_in_threadpool(engine.reset_policy))


async def _get_model(engine: Any, request: Request, _: str) -> Response:
    # ``signed=true`` asked the retired service for a signed zip; this server has no signing key and
    # always answers the plain Vowpal Wabbit model (which import_model accepts back).
    model = await run_in_threadpool(engine.export_model)
    return Response(model, media_type="application/octet-stream",
                    headers={"Content-Disposition": 'attachment; filename="model.vw"'})


async def _put_model(engine: Any, request: Request, _: str) -> Response:
    body = await _binary_body(request)
    await run_in_threadpool(engine.import_model, body)
    return Response(status_code=204)


async def _reset_model(engine: Any, request: Request, _: str) -> Response:
    await run_in_threadpool(engine.reset_model)
    return Response(status_code=204)


async def _model_properties(engine: Any, request: Request, _: str) -> Response:
    return _json(engine.model_properties())


async def _delete_logs(engine: Any, request: Request, _: str) -> Response:
    deleted = await run_in_threadpool(engine.delete_logs)
    return Response(status_code=204, headers={DELETED_HEADER: str(deleted)})


async def _log_properties(engine: Any, request: Request, _: str) -> Response:
    return _json(engine.log_properties())


async def _stats(engine: Any, request: Request, _: str) -> Response:
    stats = dict(engine.stats())
    stats.pop("home", None)  # the server's file system is none of the caller's business
    return _json(stats)


# ---------------------------------------------------------------- evaluations

class EvaluationContract(BaseModel):
    """An offline evaluation to run (the body of POST /evaluations and PUT /evaluations/{evaluationId}).

    Declared for the OpenAPI document only: the evaluations manager validates bodies itself,
    so that errors carry Personalizer's codes (InvalidEvaluationContract, DuplicateCustomPolicyNames...).
    """

    model_config = ConfigDict(extra="ignore")

    name: str = Field(max_length=256, description="The evaluation's name.")
    startTime: datetime = Field(description="Start of the logged events to evaluate (ISO-8601; naive means UTC).")
    endTime: datetime = Field(description="End (exclusive) of the logged events to evaluate; after startTime.")
    policies: list[PolicyContract] = Field(
        default_factory=list, max_length=10,
        description="Up to 10 learning settings to evaluate beside Online, Baseline and Random; unique names.")
    enableOfflineExperimentation: bool | None = Field(
        default=None, description="v1.x: also evaluate the preset learning settings (OfflineExperimentation).")
    enablePolicyOptimization: bool | None = Field(
        default=None, description="2022-09-01-preview name of enableOfflineExperimentation.")


class PolicyReferenceContract(BaseModel):
    """A policy of a finished evaluation (the body of POST /configurations/applyFromEvaluation)."""

    evaluationId: str = Field(max_length=256)
    policyName: str | None = Field(
        default=None, max_length=256,
        description="Required by the contract; this server applies the evaluation's optimalPolicy when absent.")


def _evaluation_arguments(body: Any) -> dict[str, Any]:
    """The manager's ``create`` arguments from an EvaluationContract body."""
    if not isinstance(body, dict):
        raise PersonalizerError("InvalidEvaluationContract",
                                "the body must be a JSON object: {name, startTime, endTime, policies}")
    explore = body.get("enableOfflineExperimentation")
    if explore is None:
        explore = body.get("enablePolicyOptimization")
    if explore is not None and not isinstance(explore, bool):
        raise PersonalizerError("InvalidEvaluationContract", "enableOfflineExperimentation must be true or false")
    return {"name": body.get("name"), "start": body.get("startTime"), "end": body.get("endTime"),
            "policies": body.get("policies", []), "enable_offline_experimentation": bool(explore)}


async def _create_evaluation_v1(evaluations: Evaluations, request: Request, _: str) -> Response:
    arguments = _evaluation_arguments(await _json_body(request))
    created = await run_in_threadpool(evaluations.create, None, **arguments)
    location = str(request.url.replace(query="")).rstrip("/") + "/" + quote(created["id"], safe="")
    return Response(_dumps(created), status_code=201, media_type=_JSON, headers={"Location": location})


async def _create_evaluation(evaluations: Evaluations, request: Request, evaluation_id: str) -> Response:
    arguments = _evaluation_arguments(await _json_body(request))

    def create() -> dict[str, Any]:
        evaluations.create(evaluation_id, **arguments)
        return evaluations.get(evaluation_id, api_version=_2022_SHAPE)

    return _json(await run_in_threadpool(create))


async def _get_evaluation_v1(evaluations: Evaluations, request: Request, evaluation_id: str) -> Response:
    return _json(await run_in_threadpool(evaluations.get, evaluation_id, api_version=_V1_SHAPE))


async def _get_evaluation(evaluations: Evaluations, request: Request, evaluation_id: str) -> Response:
    # startTime and endTime (required by the contract, always sent by the SDK) default to the evaluation's range.
    q = request.query_params
    interval = _int_param(request, "intervalInMinutes", minimum=1)
    window = q.get("window") or "Expanding"
    return _json(await run_in_threadpool(
        evaluations.get, evaluation_id, api_version=_2022_SHAPE, interval_minutes=interval,
        start=q.get("startTime") or None, end=q.get("endTime") or None, window=window))


async def _list_evaluations_v1(evaluations: Evaluations, request: Request, _: str) -> Response:
    return _json(await run_in_threadpool(evaluations.list, api_version=_V1_SHAPE))


async def _list_evaluations(evaluations: Evaluations, request: Request, _: str) -> Response:
    """``{"value": [EvaluationDetails], "nextLink"}``, filtered, then ``skip``/``top``, in pages of ``maxpagesize``."""
    keep = _evaluation_filter(request.query_params.get("filter"))
    skip = _int_param(request, "skip", minimum=0) or 0
    top = _int_param(request, "top", minimum=0)
    page_size = _int_param(request, "maxpagesize", minimum=1) or 100
    items = [e for e in await run_in_threadpool(evaluations.list, api_version=_2022_SHAPE) if keep(e)]
    wanted = items[skip:] if top is None else items[skip:skip + top]
    page = wanted[:page_size]
    body: dict[str, Any] = {"value": page}
    if len(wanted) > len(page):
        rest = {"skip": skip + len(page)} | ({} if top is None else {"top": top - len(page)})
        body["nextLink"] = str(request.url.include_query_params(**rest))
    return _json(body)


async def _delete_evaluation(evaluations: Evaluations, request: Request, evaluation_id: str) -> Response:
    await run_in_threadpool(evaluations.delete, evaluation_id)
    return Response(status_code=204)


async def _apply_from_evaluation(evaluations: Evaluations, request: Request, _: str) -> Response:
    body = await _json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("evaluationId"), str):
        raise PersonalizerError("BadRequest", "the body must be a JSON object {evaluationId, policyName}")
    name = body.get("policyName")
    if name is not None and not isinstance(name, str):
        raise PersonalizerError("BadRequest", "policyName must be a string")
    await run_in_threadpool(evaluations.apply, body["evaluationId"], name or None)
    return Response(status_code=204)


def _int_param(request: Request, name: str, *, minimum: int) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise PersonalizerError("BadRequest", f"{name} must be an integer >= {minimum}, not '{value[:32]}'")
    return number


_FILTER_CLAUSE = re.compile(r"^\s*(\w+)\s+eq\s+'([^']*)'\s*$", re.IGNORECASE)


def _evaluation_filter(expression: str | None) -> Callable[[dict[str, Any]], bool]:
    """A predicate for the list's ``filter``: ``field eq 'value'`` clauses joined by ``and``.

    The contract's example is ``metadata=evaluationType eq 'Manual'``; the ``metadata=`` prefix
    is optional. Fields: id, name, status, evaluationType (values compare case-insensitively).
    """
    if not expression or not expression.strip():
        return lambda _: True
    text = re.sub(r"^\s*metadata\s*=", "", expression, flags=re.IGNORECASE)
    fields = {"id": "id", "name": "name", "status": "status", "evaluationtype": "evaluationType"}
    clauses = []
    for part in re.split(r"\s+and\s+", text, flags=re.IGNORECASE):
        match = _FILTER_CLAUSE.match(part)
        if match is None or match.group(1).lower() not in fields:
            raise PersonalizerError(
                "BadRequest", f"unsupported filter '{expression[:128]}': use clauses like evaluationType eq 'Manual' "
                f"joined by 'and' (fields: {', '.join(fields.values())})")
        clauses.append((fields[match.group(1).lower()], match.group(2).casefold()))
    return lambda e: all(str(e.get(f, "")).casefold() == v for f, v in clauses)


_EVENT = "/events/{eventId:path}"
# Hot routes first: Starlette matches routes in order.
_OPERATIONS = (
    _Operation("MultiSlot_Rank", "POST", "/multislot/rank", _rank, 201,
               "Rank actions for every slot (multi-slot).", MultiSlotRankResponse, MultiSlotRankRequest,
               multislot=True, query=(("explain", "boolean", "Extension: each slot also carries an 'explanation' "
                                       "(why the model chose its action; computed only when asked)."),)),
    _Operation("MultiSlotEvents_Reward", "POST", f"/multislot{_EVENT}/reward", _reward, 204,
               "Reward some slots of an event.", None, MultiSlotRewardRequest, multislot=True),
    _Operation("MultiSlotEvents_Activate", "POST", f"/multislot{_EVENT}/activate", _activate, 204,
               "Activate a deferred multi-slot event.", multislot=True),
    _Operation("Rank", "POST", "/rank", _rank_single, 201,
               "Rank actions (single slot): every action's probability and the chosen one.",
               RankResponse, RankRequest),
    _Operation("Events_Reward", "POST", f"{_EVENT}/reward", _reward_single, 204,
               "Reward a single-slot event.", None, RewardRequest),
    _Operation("Events_Activate", "POST", f"{_EVENT}/activate", _activate, 204,
               "Activate a deferred single-slot event."),
    _Operation("ServiceConfiguration_Get", "GET", "/configurations/service", _get_config, 200,
               "Get the service configuration.", ServiceConfiguration),
    _Operation("ServiceConfiguration_Update", "PUT", "/configurations/service", _put_config, 200,
               "Update the service configuration (fields not given keep their value).",
               ServiceConfiguration, ServiceConfiguration),
    _Operation("Policy_Get", "GET", "/configurations/policy", _get_policy, 200,
               "Get the learning policy.", PolicyContract),
    _Operation("Policy_Update", "PUT", "/configurations/policy", _put_policy, 200,
               "Set the learning policy (the model restarts with it; the log is kept).",
               PolicyContract, PolicyContract),
    _Operation("Policy_Reset", "DELETE", "/configurations/policy", _reset_policy, 200,
               "Reset the learning policy to the default; returns it.", PolicyContract),
    _Operation("Model_Get", "GET", "/model", _get_model, 200,
               "Export the Vowpal Wabbit model (model.vw).", binary_response=True),
    _Operation("Model_Import", "PUT", "/model", _put_model, 204,
               "Import a Vowpal Wabbit multi-slot model (raw application/octet-stream body).",
               binary_body=True),
    _Operation("Model_Reset", "DELETE", "/model", _reset_model, 204,
               "Reset the model to a fresh one with the current policy."),
    _Operation("Model_GetProperties", "GET", "/model/properties", _model_properties, 200,
               "When the model was created and last changed.", ModelProperties),
    _Operation("Log_Delete", "DELETE", "/logs", _delete_logs, 204,
               "Delete closed events and their rewards from the log."),
    _Operation("Log_GetProperties", "GET", "/logs/properties", _log_properties, 200,
               "The time range the event log covers.", LogsProperties),
    _Operation("Stats", "GET", "/stats", _stats, 200,
               "Extension: event counts by status, rewards, pending events, learning mode and policy."),
    # Offline evaluations: v1.x shapes on the versioned paths, 2022-09-01-preview shapes with ?api-version.
    _Operation("Evaluations_Create", "POST", "/evaluations", _create_evaluation_v1, 201,
               "Start an offline evaluation of the logged events (runs in the background; Location: its URL).",
               request_model=EvaluationContract, served=VERSIONED_PREFIXES, evaluations=True),
    _Operation("Evaluations_List", "GET", "/evaluations", _list_evaluations_v1, 200,
               "Every offline evaluation, oldest first, with its results.",
               served=VERSIONED_PREFIXES, evaluations=True),
    _Operation("Evaluations_Get", "GET", "/evaluations/{evaluationId}", _get_evaluation_v1, 200,
               "An offline evaluation: status (pending, completed, failed...) and policyResults.",
               served=VERSIONED_PREFIXES, evaluations=True, path_param="evaluationId"),
    _Operation("Evaluations_Delete", "DELETE", "/evaluations/{evaluationId}", _delete_evaluation, 204,
               "Delete an offline evaluation (a running one is cancelled).",
               served=VERSIONED_PREFIXES, evaluations=True, path_param="evaluationId"),
    _Operation("Evaluations_Create", "PUT", "/evaluations/{evaluationId}", _create_evaluation, 200,
               "Start an offline evaluation with this id (runs in the background); 409 if the id exists.",
               request_model=EvaluationContract, served=(_API_VERSION_TAG,), evaluations=True,
               path_param="evaluationId"),
    _Operation("Evaluations_List", "GET", "/evaluations", _list_evaluations, 200,
               "Offline evaluations (details without results), oldest first, paged with nextLink.",
               served=(_API_VERSION_TAG,), evaluations=True, query=(
                   ("filter", "string", "Clauses like evaluationType eq 'Manual' joined by 'and'."),
                   ("top", "integer", "At most this many evaluations."),
                   ("skip", "integer", "Skip this many evaluations first."),
                   ("maxpagesize", "integer", "Evaluations per page (default 100)."))),
    _Operation("Evaluations_Get", "GET", "/evaluations/{evaluationId}", _get_evaluation, 200,
               "An offline evaluation: status (Running, Succeeded, Failed...) and time series of its results.",
               served=(_API_VERSION_TAG,), evaluations=True, path_param="evaluationId", query=(
                   ("startTime", "string", "Start of the results' time range (default: the evaluation's)."),
                   ("endTime", "string", "End of the results' time range (default: the evaluation's)."),
                   ("intervalInMinutes", "integer", "Time-series interval: 5, 60, 360, 720 or 1440."),
                   ("window", "string", "Expanding (cumulative, default) or Rolling (per interval)."))),
    _Operation("Evaluations_Delete", "DELETE", "/evaluations/{evaluationId}", _delete_evaluation, 204,
               "Delete an offline evaluation (a running one is cancelled).",
               served=(_API_VERSION_TAG,), evaluations=True, path_param="evaluationId"),
    _Operation("ServiceConfiguration_ApplyFromEvaluation", "POST", "/configurations/applyFromEvaluation",
               _apply_from_evaluation, 204,
               "Make a policy of a finished evaluation the learning policy, with the model its replay trained.",
               request_model=PolicyReferenceContract, evaluations=True,
               served=(*(v for v in VERSIONED_PREFIXES if v != "v1.0"), _API_VERSION_TAG)),
)



# ---------------------------------------------------------------- feature importances and explanations

def _flag(request: Request, name: str) -> bool:
    """A boolean query parameter (true/false/1/0, absent: false); anything else is a 400."""
    value = request.query_params.get(name)
    if value is None or value.lower() in ("false", "0", ""):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise PersonalizerError("BadRequest", f"{name} must be true or false, not '{value[:32]}'")


def _importances(request: Request) -> FeatureImportances:
    return request.app.state.feature_importances  # type: ignore[no-any-return]


async def _create_feature_importance(engine: Any, request: Request, job_id: str) -> Response:
    body = await _json_body(request)
    jobs = _importances(request)
    return _json(await run_in_threadpool(jobs.create, job_id, body))


async def _get_feature_importance(engine: Any, request: Request, job_id: str) -> Response:
    return _json(_importances(request).get(job_id))


async def _list_feature_importances(engine: Any, request: Request, _: str) -> Response:
    """``{"value": [FeatureImportanceDetails], "nextLink"}`` after ``skip``/``top``, in pages of ``maxpagesize``."""
    skip = _int_param(request, "skip", minimum=0) or 0
    top = _int_param(request, "top", minimum=0)
    page_size = _int_param(request, "maxpagesize", minimum=1) or 100
    items = _importances(request).list()
    wanted = items[skip:] if top is None else items[skip:skip + top]
    page = wanted[:page_size]
    body: dict[str, Any] = {"value": page}
    if len(wanted) > len(page):
        rest = {"skip": skip + len(page)} | ({} if top is None else {"top": top - len(page)})
        body["nextLink"] = str(request.url.include_query_params(**rest))
    return _json(body)


async def _delete_feature_importance(engine: Any, request: Request, job_id: str) -> Response:
    await run_in_threadpool(_importances(request).delete, job_id)
    return Response(status_code=204)


async def _explain_event(engine: Any, request: Request, event_id: str) -> Response:
    return _json(await run_in_threadpool(engine.explain_event, event_id))


_OPERATIONS = (*_OPERATIONS,
    _Operation("FeatureImportances_Create", "PUT", "/featureImportances/{featureImportanceId}",
               _create_feature_importance, 200,
               "Start a feature-importance job over the logged events (runs in the background); 409 if the id exists.",
               request_model=FeatureImportanceContract, served=(_API_VERSION_TAG,),
               path_param="featureImportanceId"),
    _Operation("FeatureImportances_List", "GET", "/featureImportances", _list_feature_importances, 200,
               "Feature-importance jobs (without scores), oldest first, paged with nextLink.", FeatureImportances,
               served=(_API_VERSION_TAG,), query=(
                   ("top", "integer", "At most this many jobs."), ("skip", "integer", "Skip this many jobs first."),
                   ("maxpagesize", "integer", "Jobs per page (default 100)."))),
    _Operation("FeatureImportances_Get", "GET", "/featureImportances/{featureImportanceId}",
               _get_feature_importance, 200,
               "A feature-importance job: status, progress and featureScores (sorted, most important first).",
               FeatureImportance, served=(_API_VERSION_TAG,), path_param="featureImportanceId"),
    _Operation("FeatureImportances_Delete", "DELETE", "/featureImportances/{featureImportanceId}",
               _delete_feature_importance, 204, "Delete a feature-importance job (a running one is cancelled).",
               served=(_API_VERSION_TAG,), path_param="featureImportanceId"),
    _Operation("MultiSlotEvents_Explain", "GET", f"/multislot{_EVENT}/explanation", _explain_event, 200,
               "Extension: why each slot of a logged event got its action, by the current model.",
               multislot=True),
)

# Declared by reference (not ``model=``): FastAPI would build a pydantic field per route and status.
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": code, "content": {_JSON: {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    for status, code in _STATUS_CODES.items() if status in (400, 401, 404, 409, 413, 415, 500)}


def _make_endpoint(target: Any, op: _Operation, check_api_version: bool) -> Callable[[Request], Awaitable[Response]]:
    handler = op.handler
    param = op.path_param

    async def endpoint(request: Request) -> Response:
        try:
            if check_api_version:
                _check_api_version(request.query_params.get("api-version"))
            return await handler(target, request, request.path_params.get(param, ""))
        except PersonalizerError as exc:
            return error_response(exc)

    endpoint.__name__ = op.name
    return endpoint


class _LeanRoute(APIRoute):
    """An APIRoute for routing and the OpenAPI document whose requests skip FastAPI's per-request machinery.

    Our endpoints read their own bodies (so a rejected request costs no model
    validation) and return finished Responses, so dependency solving, body parsing
    and response-model serialisation would only add time on the hot path.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            response = await endpoint(Request(scope, receive, send))
            await response(scope, receive, send)

        self.app = app


def _check_api_version(version: str | None) -> None:
    if version is None:
        raise PersonalizerError(
            "BadRequest", f"the api-version query parameter is required on this path; use one of "
            f"{', '.join(API_VERSIONS)} (or a versioned path such as /personalizer/v1.1-preview.3/...)", 400)
    if version not in API_VERSIONS:
        raise PersonalizerError(
            "BadRequest", f"api-version '{version[:64]}' is not supported; use one of {', '.join(API_VERSIONS)}", 400)


def _openapi_extra(op: _Operation, check_api_version: bool) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    if "{eventId" in op.path:
        params.append({"name": "eventId", "in": "path", "required": True, "schema": {"type": "string"},
                       "description": "The event id returned by rank (or given to it)."})
    if "{featureImportanceId}" in op.path:
        params.append({"name": "featureImportanceId", "in": "path", "required": True,
                       "schema": {"type": "string", "maxLength": 256}, "description": "The feature importance's id."})
    if "{evaluationId}" in op.path:
        params.append({"name": "evaluationId", "in": "path", "required": True,
                       "schema": {"type": "string", "maxLength": 256}, "description": "The evaluation's id."})
    if check_api_version:
        params.append({"name": "api-version", "in": "query", "required": True,
                       "schema": {"type": "string", "enum": list(API_VERSIONS)}})
    params += [{"name": name, "in": "query", "required": False, "schema": {"type": kind}, "description": text}
               for name, kind, text in op.query]
    extra: dict[str, Any] = {"parameters": params} if params else {}
    if op.request_model is not None:
        extra["requestBody"] = {"required": True, "content": {_JSON: {
            "schema": {"$ref": f"#/components/schemas/{op.request_model.__name__}"}}}}
    elif op.binary_body:
        extra["requestBody"] = {"required": True, "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}}
    if op.binary_response:
        extra["responses"] = {"200": {"description": "The model file (model.vw).", "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
    return extra


# ---------------------------------------------------------------- ASGI guard

class _BodyTooLarge(Exception):
    pass


class _Guard:
    """Outermost layer: key check, body size limit, and a Personalizer 500 for anything unexpected.

    Runs before routing so a rejected request never reaches a handler; pure ASGI
    (no per-request task or body buffering) to keep the hot path lean.
    """

    def __init__(self, app: ASGIApp, key: str | None, max_body_bytes: int, max_model_bytes: int) -> None:
        self.app = app
        self.key = key.encode() if key else None
        self.max_body = max_body_bytes
        self.max_model = max_model_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if self.key is not None and path not in _OPEN_PATHS:
            given = next((v for k, v in scope["headers"] if k == _KEY_HEADER_BYTES), None)
            if given is None or not hmac.compare_digest(given, self.key):
                why = "missing" if given is None else "invalid"
                await _send_error(send, PersonalizerError(
                    "Unauthorized", f"access denied: {why} subscription key; send it in the {KEY_HEADER} header",
                    401))
                return
        limit = self.max_model if path.endswith("/model") and scope["method"] == "PUT" else self.max_body
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            try:
                too_large = int(length) > limit
            except ValueError:
                await _send_error(send, PersonalizerError("BadRequest", "invalid Content-Length header", 400))
                return
            if too_large:
                await _send_error(send, _too_large(limit))
                return
        started = False
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_error(send, _too_large(limit))
        except Exception:
            # Method and path only: headers (the key) and bodies never reach the log.
            logger.exception("unhandled error in %s %s", scope.get("method"), path)
            if not started:
                await _send_error(send, PersonalizerError(
                    "InternalServerError", "the server failed to process the request; see its log", 500))


def _too_large(limit: int) -> PersonalizerError:
    return PersonalizerError("PayloadSizeExceeded", f"the request body exceeds the limit of {limit} bytes", 413)


# ---------------------------------------------------------------- app factory

def create_app(
    engine: Any,
    key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    *,
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
    process_interval: float = 1.0,
    evaluations: Evaluations | None = None,
    feature_importances: FeatureImportances | None = None,
) -> FastAPI:
    """A FastAPI app serving ``engine`` (a ``LocalPersonalizer``) with Personalizer's REST contract.

    ``key``: when set, every route but health and the OpenAPI document needs it in the
    ``Ocp-Apim-Subscription-Key`` header. ``max_body_bytes`` caps JSON bodies (413 beyond);
    model imports get ``max_model_bytes``. Every ``process_interval`` seconds a background
    task closes events whose reward wait time has passed. The caller owns ``engine``.

    Offline evaluations run on an ``Evaluations`` manager over ``engine`` (kept in
    the engine's SQLite database), created here and closed when the app shuts down;
    pass ``evaluations`` to use your own (you close it). It is ``app.state.evaluations``.
    Feature-importance jobs likewise (``feature_importances``, ``app.state.feature_importances``;
    kept in ``<engine home>/feature_importances.json``).
    """

    if key is not None and (not key or not key.isascii() or not key.isprintable() or key != key.strip()):
        raise ValueError("the key must be non-empty printable ASCII without surrounding spaces (an HTTP header value)")
    owns_evaluations = evaluations is None
    if evaluations is None:
        from .evaluation import Evaluations

        evaluations = Evaluations(engine)
    manager = evaluations
    owns_importances = feature_importances is None
    if feature_importances is None:
        from .importance import FeatureImportances

        feature_importances = FeatureImportances(engine)
    importances = feature_importances

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_process_due_forever(engine, process_interval))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if owns_evaluations:  # cancels a running evaluation; it runs again on the next start
                await run_in_threadpool(manager.close)
            if owns_importances:  # likewise for a running feature-importance job
                await run_in_threadpool(importances.close)

    app = FastAPI(
        title="Personalizer Studio",
        version=_version(),
        description=("A self-hosted, Personalizer-compatible Rank / Reward service. Authenticate with the "
                     f"`{KEY_HEADER}` header. The same operations are served under /personalizer/"
                     f"{{{', '.join(VERSIONED_PREFIXES)}}}/ (no multi-slot under v1.0) and under /personalizer/ "
                     f"with ?api-version={API_VERSIONS[0]}."),
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.evaluations = manager
    app.state.feature_importances = importances
    prefixes = [(f"/personalizer/{v}", v, False) for v in VERSIONED_PREFIXES] + [
        ("/personalizer", _API_VERSION_TAG, True)]
    for op in _OPERATIONS:
        target = manager if op.evaluations else engine
        for prefix, tag, check in prefixes:
            if (op.multislot and tag == "v1.0") or (op.served is not None and tag not in op.served):
                continue
            app.router.add_api_route(
                prefix + op.path, _make_endpoint(target, op, check), methods=[op.method], status_code=op.status,
                response_model=op.response_model, summary=op.summary, tags=[tag],
                operation_id=f"{op.name}_{tag.replace('.', '_').replace('-', '_')}",
                responses=_ERROR_RESPONSES, openapi_extra=_openapi_extra(op, check) or None,
                route_class_override=_LeanRoute,
            )

    async def health(request: Request) -> Response:
        return _json({"status": "ok", "service": "personalizer-studio", "version": app.version})

    for path in ("/health", "/personalizer/health"):
        app.router.add_api_route(path, health, methods=["GET"], summary="Liveness for orchestration (no key needed).",
                          tags=["health"], operation_id="health" + path.replace("/", "_"),
                          route_class_override=_LeanRoute)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        status = exc.status_code
        if status == 404:
            method, path = request.method, request.url.path
            if any(marker in path for marker in _UNSUPPORTED):
                return error_response(PersonalizerError(
                    "OperationNotAllowed", f"{method} {path} is part of the retired service's contract but "
                    "not supported by this server", 501))
            return error_response(PersonalizerError("ResourceNotFound", f"no route for {method} {path}", 404))
        if status == 405:
            return error_response(PersonalizerError(
                "OperationNotAllowed", f"method {request.method} is not allowed on {request.url.path}", 405),
                headers=dict(exc.headers or {}))
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(PersonalizerError(_STATUS_CODES.get(status, f"Http{status}"), message, status),
                              headers=dict(exc.headers or {}))

    @app.exception_handler(PersonalizerError)
    async def personalizer_error(request: Request, exc: PersonalizerError) -> Response:
        return error_response(exc)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(_Guard, key=key, max_body_bytes=max_body_bytes, max_model_bytes=max_model_bytes)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the request-body schemas (our handlers read raw bodies, FastAPI cannot see them)."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    models = {op.request_model for op in _OPERATIONS if op.request_model is not None} | {ErrorResponse}
    for model in sorted(models, key=lambda m: m.__name__):
        schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[model.__name__] = schema
    doc["components"]["securitySchemes"] = {"apim_key": {"type": "apiKey", "in": "header", "name": KEY_HEADER}}
    doc["security"] = [{"apim_key": []}]
    app.openapi_schema = doc
    return doc


async def _process_due_forever(engine: Any, interval: float) -> None:
    """Close events whose reward wait time has passed, even when no request arrives to do it."""
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(engine.process_due)
        except Exception:
            logger.exception("closing due events failed")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("personalizer-studio")
    except Exception:
        return "0.1.0"


# ---------------------------------------------------------------- serve

def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    data: str | os.PathLike[str] | None = None,
    key: str | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Run the server on ``host:port`` over the data directory ``data`` until interrupted.

    The engine is closed (model checkpointed) on a clean shutdown (Ctrl-C, SIGTERM);
    after a crash the next start replays the event log, so nothing acknowledged is lost.
    """
    import uvicorn

    from .engine import LocalPersonalizer

    engine = LocalPersonalizer(data)
    try:
        app = create_app(engine, key=key, max_body_bytes=max_body_bytes)
        where = f"http://{host}:{port}/personalizer"
        auth = f"{KEY_HEADER} required" if key else "no key (anyone who can connect may call it)"
        logger.info("Personalizer Studio serving %s (data: %s; %s)", where, engine.home, auth)
        if not key and host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning("serving on %s without a key: set --key or PERSONALIZER_KEY", host)
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                                lifespan="on", server_header=False)
        uvicorn.Server(config).run()
    finally:
        engine.close()
