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
type, JSON, then the contract's validation before anything touches any state.

The app is FastAPI's own: each operation is one typed route function
(``server_routes``), FastAPI generates ``/openapi.json``; the wire layer (error
answers, the engine worker, the key and body-size guard, error handlers) is in
``server_wire``, and the process edge (uvicorn protocol, ``serve``, signals) in
``server_edge``. This module builds the app; the names callers import from it
(``create_app``, ``serve``, the defaults) are re-exported here.

The event loop never runs engine work: a Vowpal Wabbit call holds the GIL and
cannot be interrupted, so one heavy request on the loop froze every connection,
``/health`` included. Every engine call (JSON decoding of its body too) runs on one
worker thread (``server_wire.EngineCalls``: the engine serialises on one lock, so more workers
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
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from .contract import PersonalizerError
from .interface import LocalEngine
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
from .server_edge import (  # re-exported: the CLI, tests and benchmarks import them from here
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_TIMEOUT_KEEP_ALIVE,
    MAX_HEADER_BYTES,
    is_loopback,
    serve,
)
from .server_wire import (
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_MODEL_BYTES,
    RETRY_AFTER_SECONDS,
    EngineCalls,
    Guard,
    add_error_handlers,
    error_response,
    json_response,
)

if TYPE_CHECKING:  # the managers load Vowpal Wabbit; create_app imports them when an app is built
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
    "DELETED_HEADER",
    "ERROR_CODE_HEADER",
    "KEY_HEADER",
    "MAX_HEADER_BYTES",
    "RETRY_AFTER_SECONDS",
    "STATUS_CODES",
    "STATUS_HEADER",
    "VERSIONED_PREFIXES",
    "code_of_status",
    "create_app",
    "error_response",
    "is_loopback",
    "serve",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- app factory

_DESCRIPTION = ("A self-hosted, Personalizer-compatible Rank / Reward service. Authenticate with the "
                f"`{KEY_HEADER}` header. The same operations are served under /personalizer/"
                f"{{{', '.join(VERSIONED_PREFIXES)}}}/ (no multi-slot under v1.0) and under /personalizer/ "
                f"with ?api-version={API_VERSIONS[0]}.")

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
    engine_calls = EngineCalls(lock_timeout)
    manager, importances, owned = _job_managers(engine, evaluations, feature_importances)
    from .optimization import AutoOptimizer  # automatic optimization: a daemon thread over the manager
    from .scaled_jobs import ReplicaEvaluations

    optimizer = AutoOptimizer(engine, manager, **(auto_optimization or {}))
    # A replica reports the schedule (shared state) but never runs it: the leading trainer does, once.
    scheduled_here = not isinstance(manager, ReplicaEvaluations)
    # Closed in this order when the app stops; closing a manager the app owns cancels its running
    # evaluation or feature-importance job, which runs again on the next start.
    closers = [c for c in (engine_calls.close, owned[0], optimizer.close, owned[1]) if c is not None]
    lifespan = _lifespan(engine, process_interval, optimizer if scheduled_here else None, closers)

    app = FastAPI(
        title="Personalizer Studio",
        version=_version(),
        description=_DESCRIPTION,
        lifespan=lifespan,
        redoc_url=None,
    )
    from .server_routes import add_routes  # the route module imports the managers (Vowpal Wabbit)

    app.state.engine = engine
    app.state.evaluations = manager
    app.state.engine_calls = engine_calls
    app.state.model_uploads = asyncio.Lock()
    app.state.optimizer = optimizer
    app.state.feature_importances = importances
    add_routes(app)
    _add_health(app, engine)
    add_error_handlers(app)
    app.add_middleware(Guard, keys=keys, max_body_bytes=max_body_bytes, max_model_bytes=max_model_bytes)
    return app


def _job_managers(engine: LocalEngine, evaluations: Evaluations | None,
                  importances: FeatureImportances | None) -> tuple[Evaluations, FeatureImportances, list[Any]]:
    """The evaluation and feature-importance managers, and the close of each one made here (else None).

    A scaled-out replica hands its jobs to the trainer (``job_managers``); otherwise the
    managers run them in this process, on the engine's log.
    """
    replica_jobs = getattr(engine, "job_managers", None)
    if replica_jobs is not None and evaluations is None and importances is None:
        evaluations, importances = replica_jobs()
    owned: list[Any] = [None, None]
    if evaluations is None:
        from .evaluation import Evaluations

        evaluations = Evaluations(engine)
        owned[0] = evaluations.close
    if importances is None:
        from .importance import FeatureImportances

        importances = FeatureImportances(engine)
        owned[1] = importances.close
    return evaluations, importances, owned


def _lifespan(engine: LocalEngine, process_interval: float, optimizer: AutoOptimizer | None,
              closers: list[Callable[[], None]]) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """While the app runs, close due events and check the optimization schedule (``optimizer``, unless
    None); then run ``closers``."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_process_due_forever(engine, process_interval))
        if optimizer is not None:
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


def _add_health(app: FastAPI, engine: LocalEngine) -> None:
    """The open liveness routes (no key, no engine lock: answered from the loop)."""

    async def health() -> Response:
        # Role, store kind, model id and age, backlog (a replica: the trainer's heartbeat). Engines answer
        # from memory without their lock, so this stays on the loop: no hop behind a busy engine.
        details = getattr(engine, "health_details", None)
        return json_response({"status": "ok", "service": "personalizer-studio", "version": app.version,
                              **(details() if details is not None else {})})

    for path in ("/health", "/personalizer/health"):
        app.add_api_route(path, health, methods=["GET"], summary="Liveness for orchestration (no key needed).",
                          tags=["health"], operation_id="health" + path.replace("/", "_"))

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

