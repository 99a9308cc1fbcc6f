"""Log export speed, and the dashboard's all-events view read through the log listing, in one run.

    nice -n 10 python bench/log_export.py [--events 100000] [--skip-apptest]

On one SQLite log of ``--events`` simulated seed visitors (two slots each, rewarded):
- export throughput: ``logs export`` in-process (JSON Lines to /dev/null) and as the real command
  (a subprocess writing a file, beside the engine that owns the log), against the store's raw row
  read (``iter_events``, the floor any export pays) in the same run;
- the dashboard's log rows (``LogRows.refresh`` of a cold reader, no Streamlit): the previous
  reader (``engine.events()`` in time windows, from git ``--baseline``) vs. the new one through
  ``log_events`` pages, embedded and remote (a ``serve`` subprocess on the same log);
- the Reward trends page's first load of "All events in the log" (AppTest wall time of a fresh
  server process's first tab), embedded vs. remote.
Machines here are noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from personalizer.client import PersonalizerClient  # noqa: E402
from personalizer.dashboard.log_trends import LogRows  # noqa: E402
from personalizer.dashboard.scenarios import builtin  # noqa: E402
from personalizer.logexport import export_log  # noqa: E402
from personalizer.simulation import simulate  # noqa: E402

KEY = "bench-key-0123456789"
APP = str(ROOT / "app.py")


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _old_log_rows(commit: str) -> type | None:
    """The previous ``LogRows`` (it read ``engine.events()`` in time windows), loaded from git."""
    try:
        source = subprocess.run(["git", "show", f"{commit}:personalizer/dashboard/log_trends.py"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
    except (subprocess.CalledProcessError, OSError):
        return None
    spec = importlib.util.spec_from_loader("personalizer.dashboard._old_log_trends", loader=None)
    assert spec is not None
    module = types.ModuleType(spec.name)
    module.__package__ = "personalizer.dashboard"
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, "old_log_trends.py", "exec"), module.__dict__)  # the project's own file, from git
    return module.LogRows  # type: ignore[no-any-return]


class _Server:
    """``python -m personalizer serve`` on the data directory (loopback, free port), stopped by ``close``."""

    def __init__(self, home: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PERSONALIZER_KEY": KEY, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "personalizer", "serve", "--port", str(self.port),
                                      "--data", str(home), "--log-level", "warning"], cwd=ROOT, env=env)
        with PersonalizerClient(self.base, KEY, retries=0, timeout=2) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.health()
                    return
                except Exception:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        self.close()
                        raise RuntimeError("the server did not start") from None
                    time.sleep(0.1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def _apptest_first_load(events: int) -> float:
    """AppTest wall time of the trends page's first run on the log view (the log read included)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=600)
    at.switch_page("pages/reward_trends.py")
    seconds, _ = _timed(at.run)
    assert not at.exception, at.exception
    assert at.segmented_control(key="trend-view").value == "All events in the log"
    assert at.metric[0].value == f"{events:,}", at.metric[0].value
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="logged visitors (two slots each)")
    parser.add_argument("--baseline", default="dc65e8b", help="git commit of the previous log rows reader")
    parser.add_argument("--skip-apptest", action="store_true", help="leave out the AppTest page loads")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp()) / "home"
    os.environ["PERSONALIZER_HOME"] = str(home)
    os.environ.pop("PERSONALIZER_STORE", None)
    os.environ.pop("PERSONALIZER_ENDPOINT", None)
    n = args.events
    rows: list[tuple[str, str, str]] = []

    from personalizer.dashboard.backend import clear_caches, embedded_engine, resolve_home

    engine = embedded_engine(resolve_home())
    fill, _ = _timed(lambda: simulate(engine, builtin("seed"), n, seed=11))
    print(f"filled {n:,} events in {fill:.1f} s", file=sys.stderr)

    # -- export throughput, beside the owning engine
    raw, _ = _timed(lambda: sum(1 for _ in engine._log.iter_events()))  # the row read alone (baseline)
    with open(os.devnull, "w", encoding="utf-8") as sink:
        inproc, written = _timed(lambda: export_log(sink, home))
    assert written == n, written
    out = home.parent / "export.jsonl"
    cli, done = _timed(lambda: subprocess.run([sys.executable, "-m", "personalizer", "logs", "export", "--store",
                                               str(home), "--out", str(out)], cwd=ROOT, check=True,
                                              env={**os.environ, "PYTHONPATH": str(ROOT)}))
    size_mb = out.stat().st_size / 1e6
    rows += [
        ("store row read (iter_events, baseline)", f"{n / raw:,.0f} events/s", f"{raw:.2f} s"),
        ("logs export in-process (JSON Lines to /dev/null)", f"{n / inproc:,.0f} events/s",
         f"{inproc:.2f} s, {raw / inproc:.2f}x the row read"),
        ("logs export command (subprocess, file, beside the server's engine)", f"{n / cli:,.0f} events/s",
         f"{cli:.2f} s incl. interpreter start, {size_mb:.0f} MB"),
    ]

    # -- the dashboard's log rows, cold, no Streamlit
    old_cls = _old_log_rows(args.baseline)
    old = None
    if old_cls is not None:
        old, _ = _timed(lambda: old_cls(engine).refresh())
        rows.append((f"LogRows cold read, previous reader (engine.events(), git {args.baseline})",
                     f"{old:.2f} s", "baseline"))
        from personalizer.dashboard.log_trends import _collection_paused

        def old_paused() -> None:
            with _collection_paused():
                old_cls(engine).refresh()

        paused, _ = _timed(old_paused)
        rows.append(("LogRows cold read, previous reader with the collector paused as the new one does",
                     f"{paused:.2f} s", f"{old / paused:.2f}x faster than previous: the pause's share"))
    new_embedded, _ = _timed(lambda: LogRows(engine).refresh())
    rows.append(("LogRows cold read through log_events, embedded", f"{new_embedded:.2f} s",
                 f"{old / new_embedded:.2f}x faster than previous" if old else ""))
    embedded_page = _apptest_first_load(n) if not args.skip_apptest else None

    clear_caches()  # closes the embedded engine: the server takes the data directory
    server = _Server(home)
    try:
        with PersonalizerClient(server.base, KEY, timeout=120) as client:
            new_remote, _ = _timed(lambda: LogRows(client).refresh())
        rows.append(("LogRows cold read through log_events, remote (serve subprocess, HTTP)", f"{new_remote:.2f} s",
                     f"{new_remote / new_embedded:.2f}x embedded" + (f", {old / new_remote:.2f}x faster than previous"
                                                                    if old else "")))
        remote_page = None
        if not args.skip_apptest:
            os.environ["PERSONALIZER_ENDPOINT"] = server.base
            os.environ["PERSONALIZER_KEY"] = KEY
            clear_caches()
            remote_page = _apptest_first_load(n)
    finally:
        server.close()
    if embedded_page is not None and remote_page is not None:
        rows.append(("Reward trends, all events, first load of a server process (AppTest), embedded",
                     f"{embedded_page:.2f} s", "README's previous measure: 12.4 s"))
        rows.append(("Reward trends, all events, first load (AppTest), remote", f"{remote_page:.2f} s",
                     f"{remote_page / embedded_page:.2f}x embedded"))

    print(f"Log export benchmark: {n:,} SQLite events (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)\n")
    print("| measurement | result | note |")
    print("|---|---|---|")
    for name, value, note in rows:
        print(f"| {name} | {value} | {note} |")


if __name__ == "__main__":
    main()
