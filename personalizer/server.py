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

The event loop never runs engine work: a Vowpal Wabbit call holds the GIL and
cannot be interrupted, so one heavy request on the loop froze every connection,
``/health`` included. Every engine call (JSON decoding of its body too) runs on one
worker thread (``_EngineCalls``: the engine serialises on one lock, so more workers
would only queue on it); slow administrative calls (model export/import, policy
changes, log deletion, evaluations) run in Starlette's thread pool. ``/health``
answers from the loop without the engine. A call that waited longer than
``lock_timeout`` for the worker or for the engine lock answers 503
``ServiceUnavailable`` with ``Retry-After``; a rank whose estimated feature count is
over the budget (``personalizer.budget``) is refused before any VW work. Model
uploads stream to a temporary file in the data directory, one at a time (503 for
the others). The hop costs two thread wake-ups per call (measured: one client's rank
p50 +0.1 ms on a loaded 2-core machine; README, REST server).

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
import ipaddress
import json
import logging
import os
import queue
import re
import signal
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
from starlette.requests import ClientDisconnect
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
    loads,
)
from .interface import LocalEngine
from .logexport import LogEventsPage
from .protocol import (  # re-exported: callers import them from the server too
    API_VERSIONS,
    DELETED_HEADER,
    ERROR_CODE_HEADER,
    KEY_HEADER,
    STATUS_CODES,
    STATUS_HEADER,
    VERSIONED_PREFIXES,
    code_of_status,
)

if TYPE_CHECKING:  # the manager loads Vowpal Wabbit; create_app imports it when an app is built
    from .evaluation import Evaluations
    from .importance import FeatureImportances
    from .optimization import AutoOptimizer

__all__ = [
    "API_VERSIONS",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_MODEL_BYTES",
    "DEFAULT_TIMEOUT_KEEP_ALIVE",
    "KEY_HEADER",
    "VERSIONED_PREFIXES",
    "create_app",
    "serve",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_MODEL_BYTES = 256 * 1024 * 1024
#: Seconds an engine call may wait (for the engine worker, then for the engine lock) before a 503.
DEFAULT_LOCK_TIMEOUT = 5.0
#: Seconds an idle keep-alive connection stays open (uvicorn's ``timeout_keep_alive``).
DEFAULT_TIMEOUT_KEEP_ALIVE = 5
#: Seconds a client has to send a request's headers once it connected or began a request (0: no limit).
DEFAULT_HEADER_TIMEOUT = 10.0
#: Largest request line + headers accepted (uvicorn's h11 parser; our httptools protocol: 431 beyond).
MAX_HEADER_BYTES = 64 * 1024
#: ``Retry-After`` seconds sent with 503 answers.
RETRY_AFTER_SECONDS = 1

_KEY_HEADER_BYTES = KEY_HEADER.lower().encode()
_OPEN_PATHS = frozenset({"/health", "/personalizer/health", "/openapi.json", "/docs", "/docs/oauth2-redirect"})
_JSON = "application/json"
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
    """A Personalizer error body with its status and the service's ``x-ms-error-code`` header.

    A 503 (busy) also says when to retry (``Retry-After``), which PersonalizerClient honours.
    """
    extra = {"Retry-After": str(RETRY_AFTER_SECONDS)} if exc.status == 503 else {}
    return Response(_dumps(exc.to_body()), status_code=exc.status, media_type=_JSON,
                    headers={ERROR_CODE_HEADER: exc.code, **extra, **(headers or {})})


async def _send_error(send: Send, exc: PersonalizerError) -> None:
    """Send an error straight from the ASGI layer (before routing)."""
    body = _dumps(exc.to_body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (ERROR_CODE_HEADER.encode(), exc.code.encode())]
    if exc.status == 503:
        headers.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _busy(message: str) -> PersonalizerError:
    return PersonalizerError("ServiceUnavailable", message, 503)


# ---------------------------------------------------------------- engine calls off the loop

class _EngineCalls:
    """Runs engine calls on one worker thread, never on the event loop.

    One worker because the engine serialises on one lock: more threads would only wait
    on it and contend for the GIL. A call that waited for the worker longer than
    ``wait_bound`` seconds answers 503 without touching the engine (the engine bounds its
    own lock wait the same way, ``LocalPersonalizer.lock_timeout``), so a long call
    cannot build an unbounded queue behind it. A plain queue and ``call_soon_threadsafe``
    rather than ``run_in_executor``: the hop is on every rank, and the executor's
    future chaining cost measurably more.
    """

    def __init__(self, wait_bound: float | None) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._wait_bound = wait_bound
        self._worker = threading.Thread(target=self._work, name="engine", daemon=True)
        self._worker.start()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the engine worker."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, time.monotonic(), fn, args))
        return await future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, submitted, fn, args = job
            waited = time.monotonic() - submitted
            result, error = None, None
            try:
                if self._wait_bound is not None and waited > self._wait_bound:
                    raise _busy(f"the engine is busy (this call waited {waited:.1f} s for it); retry later")
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting request, which answers it
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody awaits it
                loop.call_soon_threadsafe(_settle, future, result, error)

    def close(self) -> None:
        """Stop the worker after the calls queued before (uvicorn has finished its requests by then)."""
        self._jobs.put(None)
        self._worker.join()


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


async def _offload(request: Request, fn: Callable[..., Any], *args: Any) -> Any:
    calls: _EngineCalls = request.app.state.engine_calls
    return await calls.run(fn, *args)


def _decoding(fn: Callable[[Any], Any]) -> Callable[[bytes], Any]:
    """``fn`` applied to a JSON body's decoded value (decoding a 1 MB body is work too: off the loop)."""
    return lambda body: fn(loads(body))


# ---------------------------------------------------------------- request bodies

def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _json_bytes(request: Request) -> bytes:
    """The request's body; 415 unless the content type is JSON (``contract.loads`` decodes it)."""
    media = _media_type(request)
    if media != _JSON and not (media.startswith("application/") and media.endswith("+json")):
        shown = media or "none"
        raise PersonalizerError("UnsupportedMediaType",
                                f"Content-Type must be application/json, not {shown}", 415)
    return await request.body()


async def _json_body(request: Request) -> Any:
    """The request's JSON value; 415 unless the content type is JSON, 400 unless it parses (for small bodies)."""
    return loads(await _json_bytes(request))


def _check_binary_type(request: Request) -> None:
    media = _media_type(request)
    if media not in ("", "application/octet-stream"):
        raise PersonalizerError("UnsupportedMediaType",
                                f"Content-Type must be application/octet-stream, not {media}", 415)


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


async def _rank(engine: LocalEngine, request: Request, _: str) -> Response:
    body = await _json_bytes(request)
    if _flag(request, "explain"):  # extension: why each slot got its action (never computed unless asked)
        return _json(await _offload(request, _decoding(lambda req: engine.rank(req, explain=True)), body), 201)
    return _json(await _offload(request, _decoding(engine.rank), body), 201)


async def _reward(engine: LocalEngine, request: Request, event_id: str) -> Response:
    body = await _json_bytes(request)
    return _receipt(await _offload(request, _decoding(lambda value: engine.reward(event_id, value)), body))


async def _activate(engine: LocalEngine, request: Request, event_id: str) -> Response:
    return _receipt(await _offload(request, engine.activate, event_id))


async def _rank_single(engine: LocalEngine, request: Request, _: str) -> Response:
    body = await _json_bytes(request)
    return _json(await _offload(request, _decoding(engine.rank_single), body), 201)


async def _reward_single(engine: LocalEngine, request: Request, event_id: str) -> Response:
    body = await _json_bytes(request)
    return _receipt(await _offload(request, _decoding(lambda value: engine.reward_single(event_id, value)), body))


async def _get_config(engine: LocalEngine, request: Request, _: str) -> Response:
    return _json(await _offload(request, engine.get_service_configuration))


async def _put_config(engine: LocalEngine, request: Request, _: str) -> Response:
    body = await _json_body(request)
    return _json(await run_in_threadpool(engine.update_service_configuration, body))


async def _get_policy(engine: LocalEngine, request: Request, _: str) -> Response:
    return _json(await _offload(request, engine.get_policy))


async def _put_policy(engine: LocalEngine, request: Request, _: str) -> Response:
    body = await _json_body(request)
    return _json(await run_in_threadpool(engine.update_policy, body))


async def _reset_policy(engine: LocalEngine, request: Request, _: str) -> Response:
    return _json(await run_in_threadpool(engine.reset_policy))


async def _policy_history(engine: LocalEngine, request: Request, _: str) -> Response:
    top = _int_param(request, "top", minimum=1)
    value = await run_in_threadpool(engine.policy_history, top)
    optimizer = getattr(request.app.state, "optimizer", None)
    status = await run_in_threadpool(optimizer.status) if optimizer is not None else None
    return _json({"value": value, "autoOptimization": status})


async def _policy_change(engine: LocalEngine, request: Request, change_id: str) -> Response:
    return _json(await run_in_threadpool(engine.policy_change, change_id))


async def _rollback_policy(engine: LocalEngine, request: Request, change_id: str) -> Response:
    return _json(await run_in_threadpool(engine.rollback_policy, change_id))


async def _get_model(engine: LocalEngine, request: Request, _: str) -> Response:
    # ``signed=true`` asked the retired service for a signed zip; this server has no signing key and
    # always answers the plain Vowpal Wabbit model (which import_model accepts back).
    model = await run_in_threadpool(engine.export_model)
    return Response(model, media_type="application/octet-stream",
                    headers={"Content-Disposition": 'attachment; filename="model.vw"'})


async def _put_model(engine: LocalEngine, request: Request, _: str) -> Response:
    """Stream the upload to a temporary file in the data directory (within the body limit, which
    the guard enforces as chunks arrive), then hand it to the engine, read once. One upload at a
    time: the others answer 503 at once, so concurrent uploads cost one model's memory, not four."""
    _check_binary_type(request)
    uploads: asyncio.Lock = request.app.state.model_uploads
    if uploads.locked():
        raise _busy("another model upload is being processed; retry when it is done")
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


async def _reset_model(engine: LocalEngine, request: Request, _: str) -> Response:
    await run_in_threadpool(engine.reset_model)
    return Response(status_code=204)


async def _model_properties(engine: LocalEngine, request: Request, _: str) -> Response:
    return _json(await _offload(request, engine.model_properties))


async def _delete_logs(engine: LocalEngine, request: Request, _: str) -> Response:
    deleted = await run_in_threadpool(engine.delete_logs)
    return Response(status_code=204, headers={DELETED_HEADER: str(deleted)})


async def _log_properties(engine: LocalEngine, request: Request, _: str) -> Response:
    return _json(await _offload(request, engine.log_properties))


async def _log_events(engine: LocalEngine, request: Request, _: str) -> Response:
    """Extension: one page of the event log in the export shape; ``nextLink`` carries the cursor on."""
    q = request.query_params
    top = _int_param(request, "top", minimum=1)

    def page() -> bytes:  # a page of 5,000 events is megabytes of JSON: encoded off the event loop too
        listed = engine.log_page(q.get("start"), q.get("end"), q.get("after"), top)
        return listed.to_json(str(request.url.include_query_params(after=listed.cursor)) if listed.more else None)

    return Response(await run_in_threadpool(page), media_type=_JSON)


async def _stats(engine: LocalEngine, request: Request, _: str) -> Response:
    stats = dict(await _offload(request, engine.stats))
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
    return _json(_page(request, [e for e in await run_in_threadpool(evaluations.list, api_version=_2022_SHAPE)
                                 if keep(e)]))


def _page(request: Request, items: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"value", "nextLink"}``: ``items`` after the ``skip``/``top`` parameters, in pages of ``maxpagesize``."""
    skip = _int_param(request, "skip", minimum=0) or 0
    top = _int_param(request, "top", minimum=0)
    page_size = _int_param(request, "maxpagesize", minimum=1) or 100
    wanted = items[skip:] if top is None else items[skip:skip + top]
    page = wanted[:page_size]
    body: dict[str, Any] = {"value": page}
    if len(wanted) > len(page):
        rest = {"skip": skip + len(page)} | ({} if top is None else {"top": top - len(page)})
        body["nextLink"] = str(request.url.include_query_params(**rest))
    return body


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
    # Extension: the policy history (every policy change, who made it, estimated lift) and rollback.
    _Operation("PolicyHistory_List", "GET", "/configurations/policy/history", _policy_history, 200,
               "Extension: every change of the learning policy, newest first, and automatic optimization's "
               "status.", query=(("top", "integer", "At most this many changes (newest first)."),)),
    _Operation("PolicyHistory_Get", "GET", "/configurations/policy/history/{changeId}", _policy_change, 200,
               "Extension: one recorded change of the learning policy.", path_param="changeId"),
    _Operation("PolicyHistory_Rollback", "POST", "/configurations/policy/history/{changeId}/rollback",
               _rollback_policy, 200,
               "Extension: restore the policy a recorded change replaced (tried like any new policy); "
               "answers the new change, 409 when that policy is already live.", path_param="changeId"),
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
    _Operation("Log_ListEvents", "GET", "/logs/events", _log_events, 200,
               "Extension: logged events (any status) in creation order, in the shape 'logs export' writes, "
               "paged by an opaque cursor that stays valid while new events arrive.", LogEventsPage,
               query=(("start", "string", "Only events created at or after this ISO-8601 time."),
                      ("end", "string", "Only events created before this ISO-8601 time."),
                      ("after", "string", "The cursor of an earlier page: list what came after it."),
                      ("top", "integer", "Events per page: 1 to 5000 (default 500)."))),
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


async def _create_feature_importance(engine: LocalEngine, request: Request, job_id: str) -> Response:
    body = await _json_body(request)
    jobs = _importances(request)
    return _json(await run_in_threadpool(jobs.create, job_id, body))


async def _get_feature_importance(engine: LocalEngine, request: Request, job_id: str) -> Response:
    return _json(_importances(request).get(job_id))


async def _list_feature_importances(engine: LocalEngine, request: Request, _: str) -> Response:
    """``{"value": [FeatureImportanceDetails], "nextLink"}`` after ``skip``/``top``, in pages of ``maxpagesize``."""
    return _json(_page(request, _importances(request).list()))


async def _delete_feature_importance(engine: LocalEngine, request: Request, job_id: str) -> Response:
    await run_in_threadpool(_importances(request).delete, job_id)
    return Response(status_code=204)


async def _explain_event(engine: LocalEngine, request: Request, event_id: str) -> Response:
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
    for status, code in STATUS_CODES.items() if status in (400, 401, 404, 409, 413, 415, 500)}


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
    if "{changeId}" in op.path:
        params.append({"name": "changeId", "in": "path", "required": True, "schema": {"type": "string"},
                       "description": "The policy change's id (from the policy history)."})
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
    (no per-request task or body buffering) to keep the hot path lean. Any of
    ``keys`` is accepted (two during a rotation); each is compared in constant time,
    all of them every time, so timing tells nothing about which one almost matched.
    """

    def __init__(self, app: ASGIApp, keys: Sequence[str], max_body_bytes: int, max_model_bytes: int) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.max_body = max_body_bytes
        self.max_model = max_model_bytes

    def _key_ok(self, given: bytes) -> bool:
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(given, key)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if self.keys and path not in _OPEN_PATHS:
            given = next((v for k, v in scope["headers"] if k == _KEY_HEADER_BYTES), None)
            if given is None or not self._key_ok(given):
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
        except ClientDisconnect:
            # Routine on the internet (a closed tab, a timeout): one debug line, no traceback.
            logger.debug("client disconnected before its request body was complete: %s %s",
                         scope.get("method"), path)
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
    engine: LocalEngine,
    key: str | Sequence[str] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    *,
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
    process_interval: float = 1.0,
    evaluations: Evaluations | None = None,
    lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
    max_rank_features: int | None | bool = True,
    auto_optimization: dict[str, Any] | None = None,
    feature_importances: FeatureImportances | None = None,
) -> FastAPI:
    """A FastAPI app serving ``engine`` (a ``LocalPersonalizer``) with Personalizer's REST contract.

    ``key``: when set (a key, or several valid at once, e.g. old and new during a rotation),
    every route but health and the OpenAPI document needs one in the
    ``Ocp-Apim-Subscription-Key`` header. ``max_body_bytes`` caps JSON bodies (413 beyond);
    model imports get ``max_model_bytes``. Every ``process_interval`` seconds a background
    task closes events whose reward wait time has passed. The caller owns ``engine``; the app
    sets its ``lock_timeout`` (503 after waiting that long for it) and, unless
    ``max_rank_features`` is True (keep the engine's), its rank budget (None: no limit).

    Offline evaluations run on an ``Evaluations`` manager over ``engine`` (kept in
    the engine's SQLite database), created here and closed when the app shuts down;
    pass ``evaluations`` to use your own (you close it). It is ``app.state.evaluations``.
    Automatic optimization (``personalizer.optimization.AutoOptimizer`` over that manager,
    ``app.state.optimizer``) checks its schedule on a daemon thread while the app runs;
    ``auto_optimization`` passes it options (``clock``, ``min_events``, ``margin``, ``poll_seconds``).
    Feature-importance jobs likewise (``feature_importances``, ``app.state.feature_importances``;
    kept in the engine's database like the evaluations).
    """

    keys = _checked_keys(key)
    engine.lock_timeout = lock_timeout
    if max_rank_features is not True:
        engine.max_rank_features = max_rank_features
    engine_calls = _EngineCalls(lock_timeout)
    owns_evaluations = evaluations is None
    replica_jobs = getattr(engine, "job_managers", None)  # a scaled-out replica: the trainer runs the jobs
    if replica_jobs is not None and evaluations is None and feature_importances is None:
        evaluations, feature_importances = replica_jobs()
    if evaluations is None:
        from .evaluation import Evaluations

        evaluations = Evaluations(engine)
    manager = evaluations
    from .optimization import AutoOptimizer  # automatic optimization: a daemon thread over the manager

    optimizer = AutoOptimizer(engine, manager, **(auto_optimization or {}))
    owns_importances = feature_importances is None
    if feature_importances is None:
        from .importance import FeatureImportances

        feature_importances = FeatureImportances(engine)
    importances = feature_importances

    # Closed in this order when the app stops; closing a manager the app owns cancels its running
    # evaluation or feature-importance job, which runs again on the next start.
    closers = [engine_calls.close, *([manager.close] if owns_evaluations else []), optimizer.close,
               *([importances.close] if owns_importances else [])]
    lifespan = _lifespan(engine, process_interval, optimizer, closers)

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
    app.state.engine_calls = engine_calls
    app.state.model_uploads = asyncio.Lock()
    app.state.optimizer = optimizer
    app.state.feature_importances = importances
    _add_routes(app, engine, manager)
    _add_error_handlers(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(_Guard, keys=keys, max_body_bytes=max_body_bytes, max_model_bytes=max_model_bytes)
    return app


def _lifespan(engine: LocalEngine, process_interval: float, optimizer: AutoOptimizer,
              closers: list[Callable[[], None]]) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """While the app runs, close due events and check the optimization schedule; then run ``closers``."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_process_due_forever(engine, process_interval))
        optimizer.start()
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for close in closers:
                await run_in_threadpool(close)

    return lifespan

def _checked_keys(key: str | Sequence[str] | None) -> list[str]:
    """The subscription keys as a list; ValueError for one that cannot be an HTTP header value."""
    keys = [key] if isinstance(key, str) else list(key or [])
    for k in keys:
        if not isinstance(k, str) or not k or not k.isascii() or not k.isprintable() or k != k.strip():
            raise ValueError("a key must be non-empty printable ASCII without surrounding spaces "
                             "(an HTTP header value)")
    return keys


def _add_routes(app: FastAPI, engine: LocalEngine, manager: Evaluations) -> None:
    """Every operation under each versioned prefix it is served at, and the health routes."""
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
        # Role, store kind, model id and age, backlog (a replica: the trainer's heartbeat). Engines answer
        # from memory without their lock, so this stays on the loop: no hop behind a busy engine.
        details = getattr(engine, "health_details", None)
        return _json({"status": "ok", "service": "personalizer-studio", "version": app.version,
                      **(details() if details is not None else {})})

    for path in ("/health", "/personalizer/health"):
        app.router.add_api_route(path, health, methods=["GET"], summary="Liveness for orchestration (no key needed).",
                          tags=["health"], operation_id="health" + path.replace("/", "_"),
                          route_class_override=_LeanRoute)



def _add_error_handlers(app: FastAPI) -> None:
    """Personalizer's error body for routing errors (404, 405, ...) and for every PersonalizerError."""

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
        return error_response(PersonalizerError(code_of_status(status), message, status),
                              headers=dict(exc.headers or {}))

    @app.exception_handler(PersonalizerError)
    async def personalizer_error(request: Request, exc: PersonalizerError) -> Response:
        return error_response(exc)


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


async def _process_due_forever(engine: LocalEngine, interval: float) -> None:
    """Close events whose reward wait time has passed, even when no request arrives to do it."""
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(engine.process_due)
        except PersonalizerError as exc:
            if exc.status != 503:
                logger.error("closing due events failed: %s", exc)
            # busy (a long call holds the engine): the next round closes them
        except Exception:
            logger.exception("closing due events failed")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("personalizer-studio")
    except PackageNotFoundError:  # run from a checkout, not installed
        return "0.1.0"


# ---------------------------------------------------------------- serve

LOOPBACK_HOSTS = ("localhost",)


def is_loopback(host: str) -> bool:
    """True when ``host`` is a loopback name or address (only this machine can connect)."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _raw_error(exc: PersonalizerError) -> bytes:
    """A whole HTTP/1.1 error response with Personalizer's body, for the protocol layer (no ASGI there)."""
    body = _dumps(exc.to_body())
    reason = {431: "Request Header Fields Too Large"}.get(exc.status, "Error")
    return (f"HTTP/1.1 {exc.status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{ERROR_CODE_HEADER}: {exc.code}\r\nconnection: close\r\n\r\n").encode() + body


def _http_protocol(header_timeout: float) -> Any:
    """uvicorn's httptools protocol with a deadline and a size limit for a request's headers (uvicorn has neither).

    uvicorn times out idle keep-alive connections (``timeout_keep_alive``) but not a
    client that connects and sends nothing, or sends its headers a byte at a time: each
    such client holds a connection forever. The deadline starts when the connection
    opens and again when a request begins, and ends when its headers are complete; a
    client that misses it is disconnected (there is no request yet to answer). httptools
    refuses URLs over ~64 KB but buffers header values of any size: headers over
    ``MAX_HEADER_BYTES`` answer 431 with Personalizer's body and close. Falls back to
    uvicorn's default ("auto") without httptools.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: h11 (bounded by h11_max_incomplete_event_size only)
        logger.warning("httptools is not installed: no header read timeout")
        return "auto"

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_deadline: asyncio.TimerHandle | None = None
        _header_bytes = 0

        def _arm(self) -> None:
            self._disarm()
            self._header_bytes = 0
            self._header_deadline = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _headers_too_slow(self) -> None:
            self._header_deadline = None
            logger.debug("closing a connection that sent no complete request headers within %g s", header_timeout)
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            inside_headers = self._header_deadline is not None
            super().data_received(data)
            if inside_headers and self._header_deadline is not None:  # all of it was header bytes
                self._header_bytes += len(data)
                if self._header_bytes > MAX_HEADER_BYTES:  # httptools would buffer them without bound
                    self._disarm()
                    self.transport.write(_raw_error(PersonalizerError(
                        "RequestHeaderFieldsTooLarge",
                        f"the request line and headers exceed {MAX_HEADER_BYTES} bytes", 431)))
                    self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    data: str | os.PathLike[str] | None = None,
    key: str | Sequence[str] | None = None,
    *,
    allow_no_key: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
    lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
    max_rank_features: int | None | bool = True,
    timeout_keep_alive: int = DEFAULT_TIMEOUT_KEEP_ALIVE,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    log_level: str = "info",
    access_log: bool = False,
    role: str = "all",
) -> None:
    """Run the server on ``host:port`` over the data directory ``data`` until SIGTERM or SIGINT.

    ``role`` ``replica`` (``data`` a ``postgresql://`` URL) serves a stateless replica of a scaled-out
    deployment (``scaled.ReplicaEngine``); ``all``, the default, the embedded engine.

    Serving a non-loopback ``host`` without a key is refused (ValueError) unless
    ``allow_no_key``: anyone who can reach the port could rank, reward, replace the model
    or delete the log. On SIGTERM or SIGINT uvicorn finishes the requests in flight, the
    engine is checkpointed and closed, and ``serve`` returns (a second signal forces the
    exit). After a crash the next start replays the event log, so nothing acknowledged is lost.
    """
    import uvicorn

    from .engine import LocalPersonalizer

    keys = [key] if isinstance(key, str) else list(key or [])
    if not keys and not is_loopback(host) and not allow_no_key:
        raise ValueError(f"refusing to serve {host} without a key: anyone who can reach it could change the model "
                         "or delete the log; set PERSONALIZER_KEY, or pass --allow-no-key if that is intended")
    if role == "replica":
        from .eventstore import is_postgres_url
        from .scaled import ReplicaEngine

        if not is_postgres_url(str(data or "")):
            raise ValueError("--role replica needs --store postgresql://...: replicas share a PostgreSQL log")
        engine: Any = ReplicaEngine(str(data))
    else:
        engine = LocalPersonalizer(data)
    try:
        app = create_app(engine, key=keys, max_body_bytes=max_body_bytes, max_model_bytes=max_model_bytes,
                         lock_timeout=lock_timeout, max_rank_features=max_rank_features)
        where = f"http://{host}:{port}/personalizer"
        auth = (f"{KEY_HEADER} required ({len(keys)} key{'s' if len(keys) > 1 else ''} valid)" if keys
                else "no key (anyone who can connect may call it)")
        logger.info("Personalizer Studio serving %s (data: %s; %s)", where, engine.home, auth)
        if not keys and not is_loopback(host):
            logger.warning("serving on %s without a key (--allow-no-key)", host)
        config = uvicorn.Config(
            app, host=host, port=port, log_level=log_level, access_log=access_log, lifespan="on",
            server_header=False, timeout_keep_alive=timeout_keep_alive,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            http=_http_protocol(header_timeout) if header_timeout > 0 else "auto")
        _run_until_signal(uvicorn.Server(config))
    finally:
        engine.close()
        logger.info("Personalizer Studio stopped; model checkpointed in %s", engine.home)


def _run_until_signal(server: Any) -> None:
    """Run a uvicorn server; SIGTERM and SIGINT stop it gracefully and this returns.

    uvicorn's own handlers re-raise the signal once it has shut down, which kills the
    process (SIGTERM: exit -15) or raises KeyboardInterrupt (SIGINT: a traceback) before
    the caller can checkpoint. So uvicorn runs in a thread (where it installs no
    handlers) and the main thread's handlers ask it to exit, with its public flags.
    """
    if threading.current_thread() is not threading.main_thread():
        server.run()  # signals belong to whoever runs the main thread
        return

    def stop(signum: int, _frame: Any) -> None:
        if server.should_exit:
            server.force_exit = True  # a second signal: do not wait for open connections
        server.should_exit = True
        logger.info("received %s: shutting down", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        thread = threading.Thread(target=server.run, name="uvicorn")
        thread.start()
        while thread.is_alive():
            thread.join(0.25)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise OSError("the server did not start (is the port in use? see the log above)")
