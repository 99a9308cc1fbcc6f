"""The REST routes: one typed FastAPI function per Personalizer operation.

Each operation is declared once, the FastAPI way (typed path and query parameters,
the contract's pydantic models as bodies and response models, status codes, the error
body as a documented response, the key as an ``APIKeyHeader`` security scheme), on a
few ``APIRouter`` groups; ``add_routes`` includes each group under every base path that
serves it. FastAPI generates ``/openapi.json`` from these declarations.

Two public FastAPI mechanisms adapt FastAPI's request handling to Personalizer's:

- ``ContractRoute`` (FastAPI's "custom Request and APIRoute class" pattern, an
  ``APIRoute.get_route_handler`` override) hands each JSON route a ``ContractRequest``
  whose ``json()`` is ``contract.loads`` (lone surrogates, depth 64, integers beyond float
  range: our 400 messages, never FastAPI's generic "error parsing the body"), and checks
  the content type (415) and decodes before FastAPI validates. FastAPI's validation errors
  become Personalizer errors in one ``RequestValidationError`` handler (``server_wire``).
- The hot routes (rank, reward, single-slot rank and reward) declare their body as
  ``Deferred[Model]``: FastAPI documents ``Model`` (pydantic's public
  ``PlainValidator(json_schema_input_type=Model)``, which validates one type and documents
  another) but passes the raw bytes through, and the engine decodes and validates them on its worker thread. Why:
  the engine's ``rank(dict)`` validates its input anyway (its embedded callers pass
  dicts), so a typed body would validate twice, and decoding plus validating a 1 MB
  body on the event loop would stall every connection, ``/health`` included, for as
  long (measured in bench/hardening.py; README, REST server). Their route class,
  ``HotRoute``, reads their few fixed parameters in its handler instead of FastAPI's
  per-request dependency solving (same hook, same rules; its docstring has the numbers).

Why one module of this size: it is the REST contract, one short typed function per
operation (about 40 of them); split by group it would scatter the one list a reader
checks against the Personalizer reference.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import tempfile
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Generic, Literal, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request, Security
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, PlainValidator, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute

from .contract import (
    MAX_ID_LENGTH,
    ErrorResponse,
    EvaluationContract,
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
    PolicyReferenceContract,
    RankRequest,
    RankResponse,
    RewardRequest,
    ServiceConfiguration,
    loads,
)
from .evaluation import Evaluations
from .importance import FeatureImportances as FeatureImportanceJobs
from .interface import LocalEngine
from .logexport import LogEventsPage
from .protocol import API_VERSIONS, DELETED_HEADER, KEY_HEADER, STATUS_CODES, STATUS_HEADER, VERSIONED_PREFIXES
from .server_wire import API_VERSION_PARAM, JSON_MEDIA, EngineCalls, busy, json_response, validation_error

__all__ = ["API_VERSION_TAG", "ContractRequest", "ContractRoute", "add_routes"]

#: Route tag of the unversioned paths (``?api-version=...``); the versioned ones are tagged by their version.
API_VERSION_TAG = "api-version"
# The evaluations manager's names for the two wire shapes of an evaluation: every v1.x path
# (v1.0 .. v1.1-preview.3) answers the v1.1-preview.1 one (evaluation.API_V1, evaluation.API_2022).
_V1_SHAPE = "v1.1-preview.1"
_2022_SHAPE = API_VERSIONS[0]
_BINARY = "application/octet-stream"
_BINARY_SCHEMA = {"type": "string", "format": "binary"}

#: The error code of an invalid body, by the body's contract (the codes the engine and managers use).
_INVALID_BODY_CODES: dict[Any, str] = {
    ServiceConfiguration: "InvalidServiceConfiguration",
    PolicyContract: "InvalidPolicyContract",
    EvaluationContract: "InvalidEvaluationContract",
    FeatureImportanceContract: "InvalidContract",
}


# ---------------------------------------------------------------- request decoding

class RawJson(bytes):
    """The undecoded bytes of a JSON body (``Deferred[Model]`` routes decode them on the engine worker)."""


def _undecoded(body: Any) -> Any:
    return body


_Model = TypeVar("_Model", bound=BaseModel)


class Deferred(Generic[_Model]):
    """``Deferred[Model]``: a body documented as ``Model`` whose bytes reach the route undecoded.

    pydantic's ``PlainValidator(json_schema_input_type=Model)`` is the public way to validate
    one thing and document another; FastAPI lists ``Model`` in the document's components.
    For the hot routes, which decode and validate on the engine's worker thread (module docstring).
    """

    def __class_getitem__(cls, model: Any) -> Any:  # the annotation FastAPI reads, not a generic alias
        return Annotated[RawJson, PlainValidator(_undecoded, json_schema_input_type=model), Body()]


_UNREAD = object()  # a body not read yet (a JSON body may decode to None)


class ContractRequest(Request):
    """A request whose JSON body is decoded by ``contract.loads`` (our limits and messages)."""

    decoded: Any = _UNREAD

    async def json(self) -> Any:
        if self.decoded is _UNREAD:
            self.decoded = loads(await self.body())
        return self.decoded


class _DeferredRequest(ContractRequest):
    """A request whose ``json()`` is the undecoded body (checked non-empty): the engine decodes it."""

    async def json(self) -> Any:
        if self.decoded is _UNREAD:
            body = await self.body()
            if not body.strip():
                loads(body)  # contract.loads's 400 for an empty body
            self.decoded = body
        return self.decoded


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _require_json(request: Request) -> None:
    media = _media_type(request)
    if media != JSON_MEDIA and not (media.startswith("application/") and media.endswith("+json")):
        raise PersonalizerError("UnsupportedMediaType",
                                f"Content-Type must be application/json, not {media or 'none'}", 415)


class ContractRoute(APIRoute):
    """FastAPI's route with Personalizer's body handling (its documented custom-route-class pattern).

    A route with a JSON body gets a ``ContractRequest``: 415 unless the content type is
    JSON, then ``contract.loads`` decodes the body (its 400s) before FastAPI validates it
    against the route's model. ``invalid_body_code`` is the error code of a body that
    fails that validation (read by the ``RequestValidationError`` handler).
    """

    #: Error code of a body that fails validation, and its model (read by the RequestValidationError handler).
    invalid_body_code = "BadRequest"
    body_model: Any = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        # FastAPI calls this from APIRoute.__init__, once the route's body field is known.
        handle = super().get_route_handler()
        if self.body_field is None:
            return handle
        self.body_model = model = self.body_field.field_info.annotation
        self.invalid_body_code = _INVALID_BODY_CODES.get(model, "BadRequest")
        request_class = _DeferredRequest if model is RawJson else ContractRequest

        async def decode_then_handle(request: Request) -> Response:
            request = request_class(request.scope, request.receive)
            _require_json(request)
            await request.json()  # our decoder's errors, before FastAPI's body handling could mask them
            return await handle(request)

        return decode_then_handle


# ---------------------------------------------------------------- dependencies

async def _engine(request: Request) -> LocalEngine:
    return request.app.state.engine  # type: ignore[no-any-return]


async def _evaluations(request: Request) -> Evaluations:
    return request.app.state.evaluations  # type: ignore[no-any-return]


async def _importances(request: Request) -> FeatureImportanceJobs:
    return request.app.state.feature_importances  # type: ignore[no-any-return]


Engine = Annotated[LocalEngine, Depends(_engine)]
Manager = Annotated[Evaluations, Depends(_evaluations)]
Importances = Annotated[FeatureImportanceJobs, Depends(_importances)]
EventId = Annotated[str, Path(alias="eventId", description="The event id returned by rank (or given to it).")]
EvaluationId = Annotated[str, Path(alias="evaluationId", max_length=MAX_ID_LENGTH,
                                   description="The evaluation's id.")]
ImportanceId = Annotated[str, Path(alias="featureImportanceId", max_length=MAX_ID_LENGTH,
                                   description="The feature importance's id.")]
ChangeId = Annotated[str, Path(alias="changeId", description="The policy change's id (from the policy history).")]
Top = Annotated[int | None, Query(ge=0, description="At most this many items.")]
Skip = Annotated[int | None, Query(ge=0, description="Skip this many items first.")]
PageSize = Annotated[int | None, Query(ge=1, description="Items per page (default 100).")]


async def _offload(request: Request, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on the engine worker thread (never on the event loop)."""
    calls: EngineCalls = request.app.state.engine_calls
    return await calls.run(fn, *args)


def _decoding(fn: Callable[[Any], Any]) -> Callable[[bytes], Any]:
    """``fn`` applied to a JSON body's decoded value (decoding a 1 MB body is work too: off the loop)."""
    return lambda body: fn(loads(body))


def _hot_engine(request: Request) -> LocalEngine:
    """The engine, for the hot routes: read from the app rather than through ``Depends`` (FastAPI's
    dependency solving cost ~0.03 ms per rank, measured in-process; the admin routes use ``Engine``)."""
    return request.app.state.engine  # type: ignore[no-any-return]


def _receipt(receipt: dict[str, Any] | None) -> Response:
    status = (receipt or {}).get("status")
    return Response(status_code=204, headers={STATUS_HEADER: str(status)} if status else None)


# ---------------------------------------------------------------- rank, reward, activate (hot: first)

_FLAG = TypeAdapter(bool)
#: Paths that carry their version; every other path needs ``?api-version`` (the included routers' dependency).
_VERSIONED_PATHS = tuple(f"/personalizer/{v}/" for v in VERSIONED_PREFIXES)


class HotRoute(ContractRoute):
    """The hot routes (rank, reward, activate): FastAPI routes whose handler skips dependency solving.

    Same documented hook as ``ContractRoute`` (``get_route_handler``). Their parameters are
    few and fixed (the event id, the raw body, the ``explain`` flag, the unversioned paths'
    ``api-version``, known from the path), so the handler reads them directly, with the same pydantic rules and
    error messages FastAPI would use; the declared signature still types them and generates
    the document. Why: FastAPI's per-request machinery (dependency solving, the security
    scheme, the query and body fields) cost 0.09 ms of a 0.22 ms server-side rank, 0.71x the
    8-client rank throughput (bench/server.py --driver raw, measured in one run).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint
        params = set(inspect.signature(endpoint).parameters)
        has_body = self.body_field is not None
        route = self

        async def handle(request: Request) -> Response:
            kwargs: dict[str, Any] = {"request": request}
            if has_body:
                _require_json(request)
                body = await request.body()
                if not body.strip():
                    loads(body)  # contract.loads's 400 for an empty body
                kwargs["body"] = RawJson(body)
            if "event_id" in params:
                kwargs["event_id"] = request.path_params["eventId"]
            versioned = request.scope["path"].startswith(_VERSIONED_PATHS)
            if versioned and not request.scope["query_string"]:  # the common case: nothing more to read
                return await endpoint(**kwargs)
            query = request.query_params
            if not versioned and query.get(API_VERSION_PARAM) not in API_VERSIONS:
                given = query.get(API_VERSION_PARAM)
                raise validation_error([{"loc": ("query", API_VERSION_PARAM), "input": given}], route)
            if "explain" in params and "explain" in query:
                try:
                    kwargs["explain"] = _FLAG.validate_python(query["explain"])
                except ValidationError as exc:
                    raise validation_error([{**e, "loc": ("query", "explain")} for e in exc.errors()], route) from None
            return await endpoint(**kwargs)

        return handle


hot_multislot = APIRouter(route_class=HotRoute)
hot_single = APIRouter(route_class=HotRoute)
_EVENT = "/events/{eventId:path}"


@hot_multislot.post("/multislot/rank", name="MultiSlot_Rank", status_code=201, response_model=MultiSlotRankResponse,
                    summary="Rank actions for every slot (multi-slot).")
async def rank(request: Request, body: Deferred[MultiSlotRankRequest],
               explain: Annotated[bool, Query(description="Extension: each slot also carries an 'explanation' (why "
                                              "the model chose its action; computed only when asked).")] = False,
               ) -> Response:
    engine = _hot_engine(request)
    if explain:  # extension: why each slot got its action (never computed unless asked)
        return json_response(await _offload(request, _decoding(lambda req: engine.rank(req, explain=True)), body), 201)
    return json_response(await _offload(request, _decoding(engine.rank), body), 201)


@hot_multislot.post(f"/multislot{_EVENT}/reward", name="MultiSlotEvents_Reward", status_code=204,
                    summary="Reward some slots of an event.")
async def reward(request: Request, event_id: EventId, body: Deferred[MultiSlotRewardRequest]) -> Response:
    engine = _hot_engine(request)
    return _receipt(await _offload(request, _decoding(lambda value: engine.reward(event_id, value)), body))


@hot_multislot.post(f"/multislot{_EVENT}/activate", name="MultiSlotEvents_Activate", status_code=204,
                    summary="Activate a deferred multi-slot event.")
async def activate(request: Request, event_id: EventId) -> Response:
    engine = _hot_engine(request)
    return _receipt(await _offload(request, engine.activate, event_id))


@hot_single.post("/rank", name="Rank", status_code=201, response_model=RankResponse,
                 summary="Rank actions (single slot): every action's probability and the chosen one.")
async def rank_single(request: Request, body: Deferred[RankRequest]) -> Response:
    engine = _hot_engine(request)
    return json_response(await _offload(request, _decoding(engine.rank_single), body), 201)


@hot_single.post(f"{_EVENT}/reward", name="Events_Reward", status_code=204, summary="Reward a single-slot event.")
async def reward_single(request: Request, event_id: EventId, body: Deferred[RewardRequest]) -> Response:
    engine = _hot_engine(request)
    return _receipt(await _offload(request, _decoding(lambda value: engine.reward_single(event_id, value)), body))


hot_single.add_api_route(f"{_EVENT}/activate", activate, methods=["POST"], name="Events_Activate", status_code=204,
                         summary="Activate a deferred single-slot event.")


# ---------------------------------------------------------------- configuration, policy, model, log

admin = APIRouter(route_class=ContractRoute)


@admin.get("/configurations/service", name="ServiceConfiguration_Get", response_model=ServiceConfiguration,
           summary="Get the service configuration.")
async def get_configuration(request: Request, engine: Engine) -> Response:
    return json_response(await _offload(request, engine.get_service_configuration))


@admin.put("/configurations/service", name="ServiceConfiguration_Update", response_model=ServiceConfiguration,
           summary="Update the service configuration (fields not given keep their value).")
async def update_configuration(engine: Engine, body: ServiceConfiguration) -> Response:
    changes = body.model_dump(by_alias=True, exclude_unset=True)
    return json_response(await run_in_threadpool(engine.update_service_configuration, changes))


@admin.get("/configurations/policy", name="Policy_Get", response_model=PolicyContract,
           summary="Get the learning policy.")
async def get_policy(request: Request, engine: Engine) -> Response:
    return json_response(await _offload(request, engine.get_policy))


@admin.put("/configurations/policy", name="Policy_Update", response_model=PolicyContract,
           summary="Set the learning policy (the model restarts with it; the log is kept).")
async def update_policy(engine: Engine, body: PolicyContract) -> Response:
    return json_response(await run_in_threadpool(engine.update_policy, body.model_dump(by_alias=True)))


@admin.delete("/configurations/policy", name="Policy_Reset", response_model=PolicyContract,
              summary="Reset the learning policy to the default; returns it.")
async def reset_policy(engine: Engine) -> Response:
    return json_response(await run_in_threadpool(engine.reset_policy))


# Extension: the policy history (every policy change, who made it, estimated lift) and rollback.
@admin.get("/configurations/policy/history", name="PolicyHistory_List",
           summary="Extension: every change of the learning policy, newest first, and automatic optimization's "
                   "status.")
async def policy_history(request: Request, engine: Engine, top: Annotated[int | None, Query(
        ge=1, description="At most this many changes (newest first).")] = None) -> Response:
    value = await run_in_threadpool(engine.policy_history, top)
    optimizer = getattr(request.app.state, "optimizer", None)
    status = await run_in_threadpool(optimizer.status) if optimizer is not None else None
    return json_response({"value": value, "autoOptimization": status})


@admin.get("/configurations/policy/history/{changeId}", name="PolicyHistory_Get",
           summary="Extension: one recorded change of the learning policy.")
async def policy_change(engine: Engine, change_id: ChangeId) -> Response:
    return json_response(await run_in_threadpool(engine.policy_change, change_id))


@admin.post("/configurations/policy/history/{changeId}/rollback", name="PolicyHistory_Rollback",
            summary="Extension: restore the policy a recorded change replaced (tried like any new policy); "
                    "answers the new change, 409 when that policy is already live.")
async def rollback_policy(engine: Engine, change_id: ChangeId) -> Response:
    return json_response(await run_in_threadpool(engine.rollback_policy, change_id))


@admin.get("/model", name="Model_Get", response_class=Response, summary="Export the Vowpal Wabbit model (model.vw).",
           responses={200: {"description": "The model file (model.vw).",
                            "content": {_BINARY: {"schema": _BINARY_SCHEMA}}}})
async def export_model(engine: Engine) -> Response:
    # ``signed=true`` asked the retired service for a signed zip; this server has no signing key and
    # always answers the plain Vowpal Wabbit model (which import_model accepts back).
    model = await run_in_threadpool(engine.export_model)
    return Response(model, media_type=_BINARY, headers={"Content-Disposition": 'attachment; filename="model.vw"'})


# The raw upload has no pydantic model: FastAPI documents it through ``openapi_extra`` (its documented way).
@admin.put("/model", name="Model_Import", status_code=204,
           summary="Import a Vowpal Wabbit multi-slot model (raw application/octet-stream body).",
           openapi_extra={"requestBody": {"required": True, "content": {_BINARY: {"schema": _BINARY_SCHEMA}}}})
async def import_model(request: Request, engine: Engine) -> Response:
    """Stream the upload to a temporary file in the data directory (within the body limit, which
    the guard enforces as chunks arrive), then hand it to the engine, read once. One upload at a
    time: the others answer 503 at once, so concurrent uploads cost one model's memory, not four."""
    media = _media_type(request)
    if media not in ("", _BINARY):
        raise PersonalizerError("UnsupportedMediaType", f"Content-Type must be application/octet-stream, not {media}",
                                415)
    uploads: asyncio.Lock = request.app.state.model_uploads
    if uploads.locked():
        raise busy("another model upload is being processed; retry when it is done")
    async with uploads:
        home = engine.home if isinstance(engine.home, os.PathLike) else None  # PostgreSQL: the system temp dir
        with tempfile.TemporaryFile(prefix="upload-", suffix=".vw", dir=home) as spool:
            async for chunk in request.stream():
                spool.write(chunk)  # page-cache writes of <= 64 KB chunks: brief, fine on the loop

            def hand_over() -> None:
                spool.seek(0)
                engine.import_model(spool.read())

            await run_in_threadpool(hand_over)
    return Response(status_code=204)


@admin.delete("/model", name="Model_Reset", status_code=204, summary="Reset the model to a fresh one with the "
              "current policy.")
async def reset_model(engine: Engine) -> Response:
    await run_in_threadpool(engine.reset_model)
    return Response(status_code=204)


@admin.get("/model/properties", name="Model_GetProperties", response_model=ModelProperties,
           summary="When the model was created and last changed.")
async def model_properties(request: Request, engine: Engine) -> Response:
    return json_response(await _offload(request, engine.model_properties))


@admin.delete("/logs", name="Log_Delete", status_code=204,
              summary="Delete closed events and their rewards from the log.")
async def delete_logs(engine: Engine) -> Response:
    deleted = await run_in_threadpool(engine.delete_logs)
    return Response(status_code=204, headers={DELETED_HEADER: str(deleted)})


@admin.get("/logs/properties", name="Log_GetProperties", response_model=LogsProperties,
           summary="The time range the event log covers.")
async def log_properties(request: Request, engine: Engine) -> Response:
    return json_response(await _offload(request, engine.log_properties))


@admin.get("/logs/events", name="Log_ListEvents", response_model=LogEventsPage,
           summary="Extension: logged events (any status) in creation order, in the shape 'logs export' "
                   "writes, paged by an opaque cursor that stays valid while new events arrive.")
async def log_events(
    request: Request, engine: Engine,
    start: Annotated[str | None, Query(description="Only events created at or after this ISO-8601 time.")] = None,
    end: Annotated[str | None, Query(description="Only events created before this ISO-8601 time.")] = None,
    after: Annotated[str | None, Query(description="The cursor of an earlier page: list what came after it.")] = None,
    top: Annotated[int | None, Query(ge=1, description="Events per page: 1 to 5000 (default 500).")] = None,
) -> Response:
    def page() -> bytes:  # a page of 5,000 events is megabytes of JSON: encoded off the event loop too
        listed = engine.log_page(start, end, after, top)
        return listed.to_json(str(request.url.include_query_params(after=listed.cursor)) if listed.more else None)

    return Response(await run_in_threadpool(page), media_type=JSON_MEDIA)


@admin.get("/stats", name="Stats",
           summary="Extension: event counts by status, rewards, pending events, learning mode and policy.")
async def stats(request: Request, engine: Engine) -> Response:
    counts = dict(await _offload(request, engine.stats))
    counts.pop("home", None)  # the server's file system is none of the caller's business
    return json_response(counts)


# ---------------------------------------------------------------- multi-slot extras (not under v1.0)

multislot_extras = APIRouter(route_class=ContractRoute)


@multislot_extras.get(f"/multislot{_EVENT}/explanation", name="MultiSlotEvents_Explain",
                      summary="Extension: why each slot of a logged event got its action, by the current model.")
async def explain_event(engine: Engine, event_id: EventId) -> Response:
    return json_response(await run_in_threadpool(engine.explain_event, event_id))


@multislot_extras.post("/configurations/applyFromEvaluation", name="ServiceConfiguration_ApplyFromEvaluation",
                       status_code=204, summary="Make a policy of a finished evaluation the learning policy, with "
                       "the model its replay trained.")
async def apply_from_evaluation(evaluations: Manager, body: PolicyReferenceContract) -> Response:
    await run_in_threadpool(evaluations.apply, body.evaluation_id, body.policy_name or None)
    return Response(status_code=204)


# ---------------------------------------------------------------- offline evaluations, v1.x shapes

evaluations_v1 = APIRouter(route_class=ContractRoute)


@evaluations_v1.post("/evaluations", name="Evaluations_Create", status_code=201,
                     summary="Start an offline evaluation of the logged events (runs in the background; "
                             "Location: its URL).")
async def create_evaluation_v1(request: Request, evaluations: Manager, body: EvaluationContract) -> Response:
    created = await run_in_threadpool(lambda: evaluations.create(None, **body.create_arguments()))
    location = str(request.url.replace(query="")).rstrip("/") + "/" + quote(created["id"], safe="")
    return json_response(created, 201, headers={"Location": location})


@evaluations_v1.get("/evaluations", name="Evaluations_List",
                    summary="Every offline evaluation, oldest first, with its results.")
async def list_evaluations_v1(evaluations: Manager) -> Response:
    return json_response(await run_in_threadpool(lambda: evaluations.list(api_version=_V1_SHAPE)))


@evaluations_v1.get("/evaluations/{evaluationId}", name="Evaluations_Get",
                    summary="An offline evaluation: status (pending, completed, failed...) and policyResults.")
async def get_evaluation_v1(evaluations: Manager, evaluation_id: EvaluationId) -> Response:
    return json_response(await run_in_threadpool(lambda: evaluations.get(evaluation_id, api_version=_V1_SHAPE)))


@evaluations_v1.delete("/evaluations/{evaluationId}", name="Evaluations_Delete", status_code=204,
                       summary="Delete an offline evaluation (a running one is cancelled).")
async def delete_evaluation(evaluations: Manager, evaluation_id: EvaluationId) -> Response:
    await run_in_threadpool(evaluations.delete, evaluation_id)
    return Response(status_code=204)


# ---------------------------------------------------------------- evaluations and feature importances, 2022 shapes

api_version_only = APIRouter(route_class=ContractRoute)


@api_version_only.put("/evaluations/{evaluationId}", name="Evaluations_Create",
                      summary="Start an offline evaluation with this id (runs in the background); 409 if the "
                              "id exists.")
async def create_evaluation(evaluations: Manager, evaluation_id: EvaluationId, body: EvaluationContract) -> Response:
    def create() -> dict[str, Any]:
        evaluations.create(evaluation_id, **body.create_arguments())
        return evaluations.get(evaluation_id, api_version=_2022_SHAPE)

    return json_response(await run_in_threadpool(create))


@api_version_only.get("/evaluations", name="Evaluations_List",
                      summary="Offline evaluations (details without results), oldest first, paged with nextLink.")
async def list_evaluations(
    request: Request, evaluations: Manager, top: Top = None, skip: Skip = None, maxpagesize: PageSize = None,
    filter: Annotated[str | None, Query(  # the contract's name
        description="Clauses like evaluationType eq 'Manual' joined by 'and'.")] = None,
) -> Response:
    """``{"value": [EvaluationDetails], "nextLink"}``, filtered, then ``skip``/``top``, in pages of ``maxpagesize``."""
    keep = _evaluation_filter(filter)
    listed = await run_in_threadpool(lambda: evaluations.list(api_version=_2022_SHAPE))
    return json_response(_page(request, [e for e in listed if keep(e)], top, skip, maxpagesize))


@api_version_only.get("/evaluations/{evaluationId}", name="Evaluations_Get",
                      summary="An offline evaluation: status (Running, Succeeded, Failed...) and time series of its "
                              "results.")
async def get_evaluation(
    evaluations: Manager, evaluation_id: EvaluationId,
    start_time: Annotated[str | None, Query(alias="startTime", description="Start of the results' time range "
                                            "(default: the evaluation's).")] = None,
    end_time: Annotated[str | None, Query(alias="endTime", description="End of the results' time range "
                                          "(default: the evaluation's).")] = None,
    interval: Annotated[int | None, Query(alias="intervalInMinutes", ge=1, description="Time-series interval: 5, "
                                          "60, 360, 720 or 1440.")] = None,
    window: Annotated[str | None, Query(description="Expanding (cumulative, default) or Rolling (per "
                                        "interval).")] = None,
) -> Response:
    # startTime and endTime (required by the contract, always sent by the SDK) default to the evaluation's range.
    return json_response(await run_in_threadpool(lambda: evaluations.get(
        evaluation_id, api_version=_2022_SHAPE, interval_minutes=interval, start=start_time or None,
        end=end_time or None, window=window or "Expanding")))


api_version_only.add_api_route("/evaluations/{evaluationId}", delete_evaluation, methods=["DELETE"],
                               name="Evaluations_Delete", status_code=204,
                               summary="Delete an offline evaluation (a running one is cancelled).")


@api_version_only.put("/featureImportances/{featureImportanceId}", name="FeatureImportances_Create",
                      summary="Start a feature-importance job over the logged events (runs in the background); 409 "
                              "if the id exists.")
async def create_feature_importance(jobs: Importances, job_id: ImportanceId,
                                    body: FeatureImportanceContract) -> Response:
    contract = body.model_dump(mode="json", by_alias=True)
    return json_response(await run_in_threadpool(jobs.create, job_id, contract))


@api_version_only.get("/featureImportances", name="FeatureImportances_List", response_model=FeatureImportances,
                      summary="Feature-importance jobs (without scores), oldest first, paged with nextLink.")
async def list_feature_importances(request: Request, jobs: Importances, top: Top = None, skip: Skip = None,
                                   maxpagesize: PageSize = None) -> Response:
    """``{"value": [FeatureImportanceDetails], "nextLink"}`` after ``skip``/``top``, in pages of ``maxpagesize``."""
    return json_response(_page(request, jobs.list(), top, skip, maxpagesize))


@api_version_only.get("/featureImportances/{featureImportanceId}", name="FeatureImportances_Get",
                      response_model=FeatureImportance, summary="A feature-importance job: status, progress and "
                      "featureScores (sorted, most important first).")
async def get_feature_importance(jobs: Importances, job_id: ImportanceId) -> Response:
    return json_response(jobs.get(job_id))


@api_version_only.delete("/featureImportances/{featureImportanceId}", name="FeatureImportances_Delete",
                         status_code=204, summary="Delete a feature-importance job (a running one is cancelled).")
async def delete_feature_importance(jobs: Importances, job_id: ImportanceId) -> Response:
    await run_in_threadpool(jobs.delete, job_id)
    return Response(status_code=204)


def _page(request: Request, items: list[dict[str, Any]], top: int | None, skip: int | None,
          page_size: int | None) -> dict[str, Any]:
    """``{"value", "nextLink"}``: ``items`` after ``skip``/``top``, in pages of ``page_size`` (default 100)."""
    skip = skip or 0
    page_size = page_size or 100
    wanted = items[skip:] if top is None else items[skip:skip + top]
    page = wanted[:page_size]
    body: dict[str, Any] = {"value": page}
    if len(wanted) > len(page):
        rest = {"skip": skip + len(page)} | ({} if top is None else {"top": top - len(page)})
        body["nextLink"] = str(request.url.include_query_params(**rest))
    return body


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


# ---------------------------------------------------------------- assembly

#: The key, as FastAPI documents it (``securitySchemes``); ``server_wire.Guard`` enforces it before routing.
subscription_key = APIKeyHeader(name=KEY_HEADER, auto_error=False, scheme_name="apim_key")
# "default" also tells FastAPI not to document its 422 (the RequestValidationError handler answers 400).
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{status: {"model": ErrorResponse, "description": code}
       for status, code in STATUS_CODES.items() if status in (400, 401, 404, 409, 413, 415, 500)},
    "default": {"model": ErrorResponse, "description": "Any other error, with its code (x-ms-error-code)."},
}


async def _api_version(
    version: Annotated[Literal[API_VERSIONS], Query(alias=API_VERSION_PARAM)],  # type: ignore[valid-type]
) -> None:
    """The unversioned paths' required ``api-version`` (the RequestValidationError handler words its errors)."""


def add_routes(app: FastAPI) -> None:
    """Every group under each base path that serves it (hot groups first: Starlette matches in order)."""
    bases = [(f"/personalizer/{v}", v) for v in VERSIONED_PREFIXES] + [("/personalizer", API_VERSION_TAG)]
    served = {  # group: the tags (versions, or api-version) serving it
        "hot_multislot": {v for _, v in bases if v != "v1.0"},
        "hot_single": {v for _, v in bases},
        "admin": {v for _, v in bases},
        "multislot_extras": {v for _, v in bases if v != "v1.0"},
        "evaluations_v1": set(VERSIONED_PREFIXES),
        "api_version_only": {API_VERSION_TAG},
    }
    groups = {"hot_multislot": hot_multislot, "hot_single": hot_single, "admin": admin,
              "multislot_extras": multislot_extras, "evaluations_v1": evaluations_v1,
              "api_version_only": api_version_only}
    for name, group in groups.items():
        for prefix, tag in bases:
            if tag not in served[name]:
                continue
            dependencies = [Security(subscription_key)] + ([Depends(_api_version)] if tag == API_VERSION_TAG else [])
            suffix = tag.replace(".", "_").replace("-", "_")
            for route in group.routes:
                _add_flat(app, prefix, route, tags=[tag], dependencies=dependencies,
                          operation_id=f"{route.name}_{suffix}")


def _add_flat(app: FastAPI, prefix: str, route: BaseRoute, **kwargs: Any) -> None:
    """``route`` (declared on a group) added to the app itself under ``prefix``.

    Not ``include_router``: since FastAPI 0.165 an included router is matched through
    nested include contexts at request time, which cost 0.05 ms per request on this
    machine (profiled in-process: half the server's overhead on a rank); routes added
    to the app are matched as a flat list, as Starlette does.
    """
    assert isinstance(route, APIRoute)
    app.router.add_api_route(
        prefix + route.path, route.endpoint, methods=sorted(route.methods), name=route.name,
        status_code=route.status_code, response_model=route.response_model, response_class=route.response_class,
        summary=route.summary, description=route.description, responses={**_ERROR_RESPONSES, **route.responses},
        openapi_extra=route.openapi_extra, route_class_override=type(route), **kwargs)
