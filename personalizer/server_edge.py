"""The server's edge: uvicorn's HTTP protocol with header limits, ``serve`` and signal handling.

Split from ``server.py`` (which builds the ASGI app) because this is about the process
and the socket, not the contract: a header read deadline and size limit uvicorn lacks,
the refusal to serve a non-loopback host without a key, and a graceful stop on SIGTERM
or SIGINT that leaves the engine checkpointed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import threading
from collections.abc import Sequence
from typing import Any

from .contract import PersonalizerError
from .protocol import ERROR_CODE_HEADER, KEY_HEADER
from .server_wire import (
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_MODEL_BYTES,
    dumps,
)

__all__ = ["DEFAULT_HEADER_TIMEOUT", "DEFAULT_TIMEOUT_KEEP_ALIVE", "MAX_HEADER_BYTES", "is_loopback", "serve"]

logger = logging.getLogger("personalizer.server")

#: Seconds an idle keep-alive connection stays open (uvicorn's ``timeout_keep_alive``).
DEFAULT_TIMEOUT_KEEP_ALIVE = 5
#: Seconds a client has to send a request's headers once it connected or began a request (0: no limit).
DEFAULT_HEADER_TIMEOUT = 10.0
#: Largest request line + headers accepted (uvicorn's h11 parser; our httptools protocol: 431 beyond).
MAX_HEADER_BYTES = 64 * 1024

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
    body = dumps(exc.to_body())
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
    command_timeout: float | None = None,
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
    from .server import create_app

    keys = [key] if isinstance(key, str) else list(key or [])
    if not keys and not is_loopback(host) and not allow_no_key:
        raise ValueError(f"refusing to serve {host} without a key: anyone who can reach it could change the model "
                         "or delete the log; set PERSONALIZER_KEY, or pass --allow-no-key if that is intended")
    if role == "replica":
        from .eventstore import default_location, is_postgres_url
        from .scaled import ReplicaEngine

        url = str(data) if data is not None else default_location() or ""  # as open_store: $PERSONALIZER_STORE
        if not is_postgres_url(url):
            raise ValueError("--role replica needs --store postgresql://... (or $PERSONALIZER_STORE): replicas "
                             "share a PostgreSQL log")
        engine: Any = ReplicaEngine(url) if command_timeout is None else \
            ReplicaEngine(url, command_timeout=command_timeout)
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
