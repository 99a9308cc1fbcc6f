"""The server's wire layer: error answers, the engine worker, the ASGI guard and the error handlers.

Everything here is independent of any one route: how a ``PersonalizerError`` becomes
Personalizer's body ``{"error": {"code", "message"}}`` with ``x-ms-error-code``; how
FastAPI's own errors (routing, request validation) become the same body; the one worker
thread engine calls run on (``EngineCalls``); and ``Guard``, the outermost ASGI layer
that checks the key, the body size and answers a 500 for anything unexpected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .contract import PersonalizerError, describe_errors, error_code
from .protocol import API_VERSIONS, ERROR_CODE_HEADER, KEY_HEADER, code_of_status

logger = logging.getLogger("personalizer.server")

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_MODEL_BYTES = 256 * 1024 * 1024
#: Seconds an engine call may wait (for the engine worker, then for the engine lock) before a 503.
DEFAULT_LOCK_TIMEOUT = 5.0
#: ``Retry-After`` seconds sent with 503 answers.
RETRY_AFTER_SECONDS = 1
JSON_MEDIA = "application/json"

_KEY_HEADER_BYTES = KEY_HEADER.lower().encode()
_OPEN_PATHS = frozenset({"/health", "/personalizer/health", "/openapi.json", "/docs", "/docs/oauth2-redirect"})
# Contract operations this server does not implement (feature importances, log exports): a clear 501.
_UNSUPPORTED = ("/logs/interactions", "/logs/observations")


# ---------------------------------------------------------------- responses

def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as every answer is sent."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A finished JSON answer (FastAPI sends a returned Response as is, without re-serialising it)."""
    return Response(dumps(obj), status_code=status, media_type=JSON_MEDIA, headers=headers)


def error_response(exc: PersonalizerError, headers: dict[str, str] | None = None) -> Response:
    """A Personalizer error body with its status and the service's ``x-ms-error-code`` header.

    A 503 (busy) also says when to retry (``Retry-After``), which PersonalizerClient honours.
    """
    extra = {"Retry-After": str(RETRY_AFTER_SECONDS)} if exc.status == 503 else {}
    return Response(dumps(exc.to_body()), status_code=exc.status, media_type=JSON_MEDIA,
                    headers={ERROR_CODE_HEADER: exc.code, **extra, **(headers or {})})


async def _send_error(send: Send, exc: PersonalizerError) -> None:
    """Send an error straight from the ASGI layer (before routing)."""
    body = dumps(exc.to_body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (ERROR_CODE_HEADER.encode(), exc.code.encode())]
    if exc.status == 503:
        headers.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def busy(message: str) -> PersonalizerError:
    """The 503 of a call that could not get the engine (or an upload slot) in time."""
    return PersonalizerError("ServiceUnavailable", message, 503)


# ---------------------------------------------------------------- engine calls off the loop

class EngineCalls:
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
                    raise busy(f"the engine is busy (this call waited {waited:.1f} s for it); retry later")
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


# ---------------------------------------------------------------- error handlers

def add_error_handlers(app: FastAPI) -> None:
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

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        return error_response(validation_error(exc.errors(), request.scope.get("route")))


#: The query parameter the unversioned paths require, and what a wrong one is told.
API_VERSION_PARAM = "api-version"


def validation_error(errors: Sequence[Any], route: Any) -> PersonalizerError:
    """FastAPI's validation errors as the PersonalizerError the engine would raise for them.

    A body error carries the code of the route's body contract (``invalid_body_code`` on our
    route class: InvalidServiceConfiguration, InvalidPolicyContract...), a query or path error
    BadRequest; the message names each field as ``contract.parse`` does (``slots[0].id: ...``).
    """
    for err in errors:
        if tuple(err.get("loc", ())) == ("query", API_VERSION_PARAM):
            given = err.get("input")
            if given is None:
                return PersonalizerError(
                    "BadRequest", f"the api-version query parameter is required on this path; use one of "
                    f"{', '.join(API_VERSIONS)} (or a versioned path such as /personalizer/v1.1-preview.3/...)", 400)
            return PersonalizerError("BadRequest", f"api-version '{str(given)[:64]}' is not supported; use one of "
                                     f"{', '.join(API_VERSIONS)}", 400)
    in_body = [err for err in errors if err.get("loc", ("",))[0] == "body"]
    code = "BadRequest"
    if in_body:
        code = error_code(getattr(route, "body_model", None), in_body, getattr(route, "invalid_body_code", code))
    return PersonalizerError(code, describe_errors(errors, strip_source=True), 400)


# ---------------------------------------------------------------- ASGI guard

class _BodyTooLarge(Exception):
    pass


class Guard:
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

