"""Helpers and fixtures that run the real server on loopback for the server/client tests.

Import the fixtures into a test module (``from server_fixtures import live_server_fixture``:
the fixture is named ``live_server``);
tests/conftest.py is shared by several people and stays untouched.

- ``ThreadedServer``: uvicorn in a background thread of the test process (fast to
  start; the engine object is reachable for white-box checks).
- ``ProcessServer``: ``python -m personalizer serve`` in a subprocess (for load,
  SIGKILL and restart tests: nothing shares the test process's GIL or memory).
Both bind 127.0.0.1 on a free port and are always stopped by the fixture.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import seed_data

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key-0123456789abcdef"
HEADERS = {"Ocp-Apim-Subscription-Key": KEY, "Content-Type": "application/json"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(base: str, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Poll ``/health`` until the server answers (or fail the test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with status {proc.returncode}")
        try:
            if requests.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server at {base} did not become healthy within {timeout} s")


class ThreadedServer:
    """The app from ``create_app`` served by uvicorn in a daemon thread."""

    def __init__(self, engine: Any, key: str | None = KEY, **app_options: Any) -> None:
        import uvicorn

        from personalizer.server import create_app

        self.engine = engine
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(engine, key=key, **app_options), host="127.0.0.1", port=self.port,
                                log_level="warning", access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn-{self.port}", daemon=True)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: Any) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


class ProcessServer:
    """``python -m personalizer serve`` in a subprocess on a data directory."""

    def __init__(self, data: Path, key: str | None = KEY, port: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.data = Path(data)
        self.key = key
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data.parent / f"server-{self.port}.log"

    def start(self) -> ProcessServer:
        env = {k: v for k, v in os.environ.items() if k != "PERSONALIZER_KEY"}
        if self.key:
            env["PERSONALIZER_KEY"] = self.key
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, "-m", "personalizer", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data", str(self.data), "--log-level", "warning", *self.extra_args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_healthy(self.base, proc=self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown handler, no checkpoint, mid-write if it was writing."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM and wait (uvicorn shuts down, the engine checkpoints); SIGKILL if it hangs."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ProcessServer:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()


def seed_actions() -> list[dict[str, Any]]:
    """The seed quickstart's four products (a fresh copy)."""
    return copy.deepcopy(seed_data.ACTIONS)


def seed_slots() -> list[dict[str, Any]]:
    """The seed quickstart's two slots (a fresh copy)."""
    return copy.deepcopy(seed_data.SLOTS)


def rank_request(event_id: str | None = None, time_of_day: str = "morning", device: str = "mobile",
                 defer: bool = False) -> dict[str, Any]:
    """A seed-shaped multi-slot rank request."""
    body: dict[str, Any] = {"contextFeatures": [{"time": time_of_day}, {"device": device}],
                            "actions": seed_actions(), "slots": seed_slots(), "deferActivation": defer}
    if event_id is not None:
        body["eventId"] = event_id
    return body


@pytest.fixture(name="server_engine")
def server_engine_fixture(tmp_path: Path) -> Iterator[Any]:
    """A fresh embedded engine (real clock) on a temporary data directory, for a server to wrap."""
    from personalizer.engine import LocalPersonalizer

    eng = LocalPersonalizer(tmp_path / "data")
    yield eng
    eng.close()


@pytest.fixture(name="live_server")
def live_server_fixture(server_engine: Any) -> Iterator[ThreadedServer]:
    """The real server (uvicorn thread) around a fresh engine, with key ``KEY``."""
    with ThreadedServer(server_engine) as server:
        yield server


@pytest.fixture(name="open_server")
def open_server_fixture(server_engine: Any) -> Iterator[ThreadedServer]:
    """The real server without a key."""
    with ThreadedServer(server_engine, key=None) as server:
        yield server


def shaped_request(n_context: int, n_actions: int = 50, n_slots: int = 10, per_item: int = 20) -> dict[str, Any]:
    """A rank request of a given shape (string features, one object each): budget tests and benchmarks."""
    return {
        "contextFeatures": [{f"c{j}": f"x{j % 7}" for j in range(n_context)}],
        "actions": [{"id": f"item-{i}", "features": [{f"a{j}": f"v{(i + j) % 9}" for j in range(per_item)}]}
                    for i in range(n_actions)],
        "slots": [{"id": f"slot-{k}", "features": [{f"s{j}": f"p{j % 5}" for j in range(per_item)}],
                   "baselineAction": f"item-{k}"} for k in range(n_slots)],
    }
