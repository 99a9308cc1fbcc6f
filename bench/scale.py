"""Benchmark: scale-out on PostgreSQL beside the embedded SQLite server, in one run on this machine.

    nice -n 10 python bench/scale.py [--seconds 8] [--clients 6] [--drain-events 20000] [--seeds 3] [--quick]

Starts its own throwaway PostgreSQL cluster (``initdb`` into a temp dir, as ``postgres`` when run as
root, a free loopback port) and every server process it measures; stops each by its PID on exit,
Ctrl-C included. Everything runs with ``rewardWaitTime`` 5 s and ``modelExportFrequency`` 1 s
(replicas swap in a new model every second while they serve).

1. **Throughput and latency over HTTP**, rank alone and rank+reward (each event ranked, then both
   slots rewarded in one call, on the next replica: a round-robin balancer), for the embedded
   SQLite server (the baseline), the embedded engine on PostgreSQL (``serve --store URL``), and
   one, two and three ``serve --role replica`` with the trainer running. ``--clients`` keep-alive
   ``http.client`` threads in one load-generator process (spread over the replicas); the load
   generator is capped at one core by its GIL. CPU ms per request of each role (replicas, the
   PostgreSQL server processes, the trainer, the load generator) from psutil, read by PID before the
   cell and after the work it caused is done (events closed by their wait time, learned, published).
2. **Reward to learned**: for each rank+reward event on replicas, from the acknowledged reward to
   (a) the event learned in the log (labels and learning order committed) and (b) the first
   published model (``NOTIFY`` received) that contains it.
3. **Trainer throughput**: N due events (the seed catalog, both slots rewarded) preloaded; the time
   a trainer takes to join, close, learn and publish them all (target >= 5,000 events/s).
4. **Learning through replicas**: ``seed-joint`` (``bench/learning.py``'s joint scenario), each
   visitor ranked on replica i % 2 and rewarded on the other, with the model exported every 1 s
   and every 10 s, beside the embedded engine with the same visitors and coin flips; online accept
   rate over events 2,500-3,000 (target: within 5 % of the embedded engine at 1 s).

On 2 cores the total throughput does not rise with replicas (every process shares the same two
cores); the CPU per request per role and the capacity per added core it implies are the numbers
that carry over to a bigger machine.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import multiprocessing as mp
import os
import platform
import pwd
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_spec = importlib.util.spec_from_file_location("bench_server", ROOT / "bench" / "server.py")
assert _spec is not None and _spec.loader is not None
bench_server = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_server)  # RawClient and the seed catalog: stdlib only, light for load workers

KEY = bench_server.KEY
WAIT = "PT5S"
WAIT_SECONDS = 5.0
CONFIG = {"rewardWaitTime": WAIT, "modelExportFrequency": "PT1S"}
SLOTS = [s["id"] for s in bench_server._SEED["slots"]]


# --------------------------------------------------------------------------- processes we start
class Started:
    """Every process this run started, stopped by PID (SIGTERM, then SIGKILL) at exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def add(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(proc)


STARTED = Started()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """A throwaway PostgreSQL cluster (as tests/pg_fixtures.py starts one): initdb, pg_ctl start, stop."""

    def __init__(self, synchronous_commit: bool = False) -> None:
        import glob

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
        if not found and not shutil.which("initdb"):
            raise SystemExit("PostgreSQL server binaries (initdb) are not installed: run scripts/test.sh")
        self.bin = Path(found[-1]).parent if found else Path(shutil.which("initdb") or "").parent
        self.as_postgres: list[str] = []
        self.directory = Path(tempfile.mkdtemp(prefix="personalizer-bench-pg-"))
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        self.port = _free_port()
        self.data = self.directory / "data"
        self.postmaster_pid: int | None = None
        run = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "timeout": 60}
        subprocess.run([*self.as_postgres, str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
                        "-U", "postgres", "--no-sync"], **run)  # type: ignore[call-overload]
        # fsync stays on (the tests turn it off for speed). synchronous_commit off by default matches SQLite's
        # default synchronous=NORMAL: no process crash loses a commit, a power cut may lose the last ~0.5 s.
        options = (f"-p {self.port} -k {self.directory} -h 127.0.0.1 -c max_connections=200"
                   f" -c synchronous_commit={'on' if synchronous_commit else 'off'}")
        subprocess.run([*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
                        "-l", str(self.directory / "log"), "-w", "start"], **run)  # type: ignore[call-overload]
        self.postmaster_pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pids(self) -> list[int]:
        """The postmaster and every server process under it (backends, WAL writer, checkpointer...)."""
        import psutil

        if self.postmaster_pid is None:
            return []
        try:
            root = psutil.Process(self.postmaster_pid)
            return [root.pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """Stop the postmaster by its PID (SIGINT: PostgreSQL's fast shutdown) and remove the cluster."""
        if self.postmaster_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.postmaster_pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and Path(f"/proc/{self.postmaster_pid}").exists():
                time.sleep(0.05)
            self.postmaster_pid = None
        shutil.rmtree(self.directory, ignore_errors=True)


def _env() -> dict[str, str]:
    return {**os.environ, "PERSONALIZER_KEY": KEY, "PYTHONPATH": str(ROOT)}


def start_server(store: str, *, role: str = "all", python: str = sys.executable,
                 log: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m personalizer serve`` on a free port; returns (process, base URL) once healthy."""
    import requests

    port = _free_port()
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    proc = STARTED.add(subprocess.Popen(
        [python, "-m", "personalizer", "serve", "--port", str(port), "--store", store, "--role", role,
         "--log-level", "warning"], cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on {store} exited with {proc.returncode}")
        try:
            if requests.get(f"{base}/health", timeout=1).ok:
                return proc, base
        except requests.RequestException:
            time.sleep(0.05)
    raise SystemExit(f"server on {store} did not start")


def start_trainer(url: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """``python -m personalizer train`` (leads once it holds the owner lock)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    return STARTED.add(subprocess.Popen([sys.executable, "-m", "personalizer", "train", "--store", url,
                                         "--log-level", "warning"], cwd=ROOT, env=_env(), stdout=out,
                                        stderr=subprocess.STDOUT))


def prepare_database(url: str, configuration: dict[str, Any]) -> None:
    """Schema, settings and the first model before any process starts (as an operator's first start does)."""
    from personalizer.engine import LocalPersonalizer

    LocalPersonalizer(url, configuration=configuration).close()


def query(url: str, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")


def settled(url: str, published_too: bool = True) -> bool:
    """Nothing pending and (a trainer's deployment) the newest published model covers every learned event."""
    pending = query(url, "SELECT COUNT(*) FROM events WHERE status = 'pending'")[0][0]
    if not published_too:  # the embedded engine learns as it closes and checkpoints every 1,000 events
        return pending == 0
    learned = query(url, "SELECT COALESCE(MAX(learn_seq), 0) FROM events")[0][0]
    published = query(url, "SELECT COALESCE(MAX(learn_seq), 0) FROM checkpoints")[0][0]
    return pending == 0 and published >= learned


# --------------------------------------------------------------------------- CPU by PID
def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each live process."""
    import psutil

    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
    return out


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings; a process born in between counts whole (one that died is lost)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


# --------------------------------------------------------------------------- load generator
def _seed_request(rng: random.Random, event_id: str) -> dict[str, Any]:
    body = bench_server.rank_request(rng)
    body["eventId"] = event_id
    return body


def _client_thread(targets: list[str], t: int, seconds: float, mix: bool, prefix: str, out: list[Any]) -> None:
    """One keep-alive client: rank on replica t % R, reward on the next one; latencies and acks."""
    rng = random.Random(zlib.crc32(f"{prefix}-{t}".encode()))
    rankers = bench_server.RawClient(targets[t % len(targets)])
    rewarders = bench_server.RawClient(targets[(t + 1) % len(targets)]) if mix else None
    ranks: list[float] = []
    rewards: list[float] = []
    acks: list[tuple[str, float]] = []
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
        event_id = f"{prefix}-{t}-{n}"
        t0 = time.perf_counter()
        answer = rankers.rank(_seed_request(rng, event_id))
        t1 = time.perf_counter()
        ranks.append(t1 - t0)
        if rewarders is not None:
            rewarders.reward(answer["eventId"], {"reward": [
                {"slotId": s["id"], "value": float(rng.random() < 0.5)} for s in answer["slots"]]})
            rewards.append(time.perf_counter() - t1)
            acks.append((event_id, time.time()))
    out.append((ranks, rewards, acks))


def _load_process(targets: list[str], clients: int, seconds: float, mix: bool, prefix: str, queue: Any) -> None:
    out: list[Any] = []
    threads = [threading.Thread(target=_client_thread, args=(targets, t, seconds, mix, prefix, out))
               for t in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    queue.put((out, time.process_time()))  # this process's CPU: the load generator's cost


def run_load(targets: list[str], clients: int, seconds: float, mix: bool,
             prefix: str) -> tuple[list[float], list[float], list[Any], int]:
    """``clients`` threads in one load-generator process; returns rank and reward latencies, acks, its CPU ms."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load_process, args=(targets, clients, seconds, mix, prefix, queue))
    proc.start()
    try:
        got = None
        while got is None:
            try:
                got = queue.get(timeout=0.5)
            except Empty:
                if not proc.is_alive():
                    raise SystemExit("the load generator died") from None
        results, cpu = got
        proc.join(timeout=30)
    finally:
        if proc.is_alive():
            proc.kill()
    ranks = [x for r, _, _ in results for x in r]
    rewards = [x for _, w, _ in results for x in w]
    acks = [a for _, _, a in results for a in a]
    return ranks, rewards, acks, int(cpu * 1000)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


# --------------------------------------------------------------------------- one deployment
@dataclass
class Deployment:
    """What a cell measures: where to send load, whose CPU is whose, and how to wait for its work to end."""

    name: str
    targets: list[str]
    roles: dict[str, list[int]]  # role -> PIDs (replicas, trainer)
    url: str | None = None  # PostgreSQL database (None: SQLite)
    pg: PgCluster | None = None


@dataclass
class Cell:
    deployment: str
    workload: str
    rps: float
    rank_p50: float
    rank_p99: float
    reward_p50: float
    reward_p99: float
    cpu_ms: dict[str, float] = field(default_factory=dict)
    acks: list[tuple[str, float]] = field(default_factory=list)


def measure(dep: Deployment, mix: bool, clients: int, seconds: float, tag: str) -> Cell:
    """One cell: warm up, load for ``seconds``, then wait for the work it caused; CPU per request per role."""
    run_load(dep.targets, clients, min(1.0, seconds / 4), mix, f"{tag}-warm")
    settle(dep)

    def pids() -> dict[str, list[int]]:
        out = dict(dep.roles)
        if dep.pg is not None:
            out["PostgreSQL"] = dep.pg.pids()
        return out

    before = {role: cpu_seconds(p) for role, p in pids().items()}
    ranks, rewards, acks, load_cpu_ms = run_load(dep.targets, clients, seconds, mix, tag)
    requests_made = len(ranks) + len(rewards)
    settle(dep)
    after = {role: cpu_seconds(p) for role, p in pids().items()}
    cpu = {role: 1000 * cpu_used(before[role], after.get(role, {})) / requests_made for role in before}
    cpu["load generator"] = load_cpu_ms / requests_made
    workload = f"{'rank+reward' if mix else 'rank'} x{clients}"
    return Cell(dep.name, workload, requests_made / seconds, 1000 * statistics.median(ranks), 1000 * _pct(ranks, 0.99),
                1000 * statistics.median(rewards) if rewards else float("nan"),
                1000 * _pct(rewards, 0.99), cpu, acks)


def measure_all(dep: Deployment, clients: int, seconds: float, tag: str) -> list[Cell]:
    """The three workloads: rank from one client (latency unqueued), rank and rank+reward from ``clients``."""
    out = []
    for n, mix in ((1, False), (clients, False), (clients, True)):
        out.append(measure(dep, mix, n, seconds, f"{tag}{n}{int(mix)}"))
        print(f"  measured {dep.name} {out[-1].workload}", file=sys.stderr)
    return out


def settle(dep: Deployment) -> None:
    """Wait for the work load caused: every event closed (after its wait time), learned and published."""
    if dep.url is None:
        time.sleep(WAIT_SECONDS + 1.5)  # the embedded server closes due events on its own timer
    else:
        wait_until(lambda: settled(dep.url or "", "trainer" in dep.roles), 120,
                   f"{dep.name} to close, learn and publish")


# --------------------------------------------------------------------------- reward -> learned
class ModelWatcher:
    """LISTENs for published models; records (learn_seq covered, time the notify arrived)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.published: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        import psycopg

        from personalizer.pgstore import MODELS_CHANNEL

        with psycopg.connect(self.url, autocommit=True) as conn, psycopg.connect(self.url, autocommit=True) as q:
            conn.execute(f"LISTEN {MODELS_CHANNEL}")
            self._ready.set()
            while not self._stop.is_set():
                for note in conn.notifies(timeout=0.2):
                    at = time.time()
                    row = q.execute("SELECT learn_seq FROM checkpoints WHERE id = %s", (int(note.payload),)).fetchone()
                    if row is not None:
                        self.published.append((int(row[0]), at))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def reward_to_learned(url: str, acks: list[tuple[str, float]], watcher: ModelWatcher) -> dict[str, float]:
    """p50/p99 seconds from each acknowledged reward to its event learned in the log and in a published model."""
    rows = query(url, "SELECT event_id, closed, learn_seq FROM events WHERE event_id = ANY(%s)",
                 ([e for e, _ in acks],))
    by_id = {e: (closed, seq) for e, closed, seq in rows}
    in_log, in_model = [], []
    published = sorted(watcher.published)
    for event_id, acked in acks:
        closed, seq = by_id.get(event_id, (None, None))
        if closed is None or seq is None:
            continue
        in_log.append(max(0.0, closed - acked))  # closed inside the reward's own transaction: before the ack
        first = min((at for covered, at in published if covered >= seq), default=None)
        if first is not None:
            in_model.append(first - acked)
    return {"n": len(in_model), "log_p50": statistics.median(in_log), "log_p99": _pct(in_log, 0.99),
            "model_p50": statistics.median(in_model), "model_p99": _pct(in_model, 0.99)}


# --------------------------------------------------------------------------- trainer throughput
def trainer_throughput(pg: PgCluster, events: int) -> dict[str, float]:
    """Preload ``events`` due events (seed catalog, both slots rewarded), time a trainer draining them."""
    from personalizer.scaled import ReplicaEngine, TrainerEngine

    url = pg.new_database("drain")
    prepare_database(url, {"rewardWaitTime": WAIT, "modelExportFrequency": "PT1S"})
    templates = 200
    replica = ReplicaEngine(url)
    try:
        rng = random.Random(5)
        for i in range(templates):
            replica.rank(_seed_request(rng, f"t-{i}"))
    finally:
        replica.close()
    copies = max(1, events // templates)
    query(url, "INSERT INTO events (event_id, created, request_hash, request, response, mode, deferred, status,"
               " model_id) SELECT e.event_id || '-' || g, e.created - 3600, e.request_hash, e.request,"
               " replace(e.response, chr(34) || e.event_id || chr(34), chr(34) || e.event_id || '-' || g || chr(34)),"
               " e.mode, e.deferred, 'pending', e.model_id"
               " FROM events e CROSS JOIN generate_series(1, %s) g", (copies,))
    query(url, "DELETE FROM events WHERE event_id NOT LIKE 't-%%-%%'")
    query(url, "INSERT INTO rewards (event_id, slot_id, value, received, late) SELECT e.event_id, s.slot,"
               " (random() < 0.5)::int, e.created + 1, false FROM events e CROSS JOIN unnest(%s::text[]) s(slot)",
               (SLOTS,))
    total = query(url, "SELECT COUNT(*) FROM events WHERE status = 'pending'")[0][0]
    query(url, "VACUUM ANALYZE")

    learn_seconds = 0.0

    class Timed(TrainerEngine):
        def _replay_after(self, start: int) -> int:
            nonlocal learn_seconds
            t0 = time.perf_counter()
            try:
                return super()._replay_after(start)
            finally:
                learn_seconds += time.perf_counter() - t0

    pg_before = cpu_seconds(pg.pids())
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    trainer = Timed(url)
    try:
        while trainer.step() > 0:
            pass
        trainer._publish()  # the last model, as the next round would publish it
    finally:
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        trainer.close()
    pg_cpu = cpu_used(pg_before, cpu_seconds(pg.pids()))
    learned = query(url, "SELECT COUNT(*) FROM events WHERE status = 'learned'")[0][0]
    assert learned == total, (learned, total)
    return {"events": total, "seconds": elapsed, "rate": total / elapsed, "learn_seconds": learn_seconds,
            "trainer_cpu_ms": 1000 * cpu / total, "pg_cpu_ms": 1000 * pg_cpu / total}


# --------------------------------------------------------------------------- learning through replicas
#: Events per point of the learning curve.
CURVE_WINDOW = 500


@dataclass
class Learning:
    """One learning run: the online accept rate in the compared window, its time, and the curve."""

    backend: str
    seed: int
    rate: float
    seconds: float
    curve: list[float]


class AlternatingReplicas:
    """The simulator's backend: visitor i ranks on replica i % 2 and rewards on the other one."""

    def __init__(self, bases: list[str], pace: float = 0.0) -> None:
        self.clients = [bench_server.RawClient(b) for b in bases]
        self.pace = pace  # visitors per second; 0: as fast as the replicas answer
        self.started: float | None = None

    @staticmethod
    def _index(event_id: str) -> int:
        return int(event_id.rsplit("-", 1)[1])

    def rank(self, request: dict[str, Any]) -> dict[str, Any]:
        i = self._index(request["eventId"])
        if self.pace > 0:  # visitor i arrives at i / pace seconds: the model's lag in events is pace x export
            self.started = self.started or time.perf_counter()
            time.sleep(max(0.0, self.started + i / self.pace - time.perf_counter()))
        return self.clients[i % 2].rank(request)

    def reward(self, event_id: str, reward: dict[str, Any]) -> None:
        self.clients[(self._index(event_id) + 1) % 2].reward(event_id, reward)

    def activate(self, event_id: str) -> None:
        raise NotImplementedError("the joint scenario defers nothing")


def learning_runs(pg: PgCluster, scenario_name: str, events: int, seeds: int, window: tuple[int, int],
                  tmp: Path, pace: float = 0.0) -> list[Learning]:
    """(backend, seed, accept rate in ``window``, seconds) for the embedded engine and two replicas at 1 s / 10 s."""
    from personalizer.engine import LocalPersonalizer
    from personalizer.simulation import accept_rate, load_scenario, simulate, window_accept_rates

    scenario = load_scenario(scenario_name)
    out = []
    for seed in range(seeds):
        t0 = time.perf_counter()
        with LocalPersonalizer(tmp / f"learn-embedded-{seed}") as engine:
            records = simulate(engine, scenario, events, seed, event_prefix="v-")
        out.append(Learning("embedded (SQLite, in process)", seed, accept_rate(records, *window),
                            time.perf_counter() - t0, window_accept_rates(records, CURVE_WINDOW)))
        for export in ("PT1S", "PT10S"):
            url = pg.new_database(f"learn_{export.lower()}_{seed}")
            prepare_database(url, {"modelExportFrequency": export})
            trainer = start_trainer(url, tmp / "trainer-learn.log")
            wait_until(lambda u=url: bool(query(u, "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND"
                                                   " application_name LIKE 'personalizer-owner-%%'",
                                                   (u.rsplit("/", 1)[1],))), 30, "the trainer to lead")
            servers = [start_server(url, role="replica", log=tmp / "replica-learn.log") for _ in range(2)]
            try:
                t0 = time.perf_counter()
                records = simulate(AlternatingReplicas([b for _, b in servers], pace), scenario, events, seed,
                                   event_prefix="v-")
                out.append(Learning(f"2 replicas, model export {export[2:].lower()}", seed,
                                    accept_rate(records, *window), time.perf_counter() - t0,
                                    window_accept_rates(records, CURVE_WINDOW)))
            finally:
                for proc, _ in servers:
                    STARTED.stop(proc)
                STARTED.stop(trainer)
            print(f"  learning: seed {seed} export {export} done", file=sys.stderr)
    return out


# --------------------------------------------------------------------------- the run
@contextlib.contextmanager
def cleaned_up() -> Iterator[None]:
    """Stop every started process by PID on any exit (Ctrl-C and SIGTERM included)."""
    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starting us in the background ignores it, and Python then never raises.
    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        STARTED.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def throughput_cells(pg: PgCluster, tmp: Path, clients: int, seconds: float) -> tuple[list[Cell], dict[str, float]]:
    """Every deployment x workload; and reward-to-learned from the replica rank+reward cells."""
    cells: list[Cell] = []
    # (a) the embedded SQLite server: the baseline.
    prepare_database(str(tmp / "sqlite"), CONFIG)
    sqlite_proc, sqlite_base = start_server(str(tmp / "sqlite"), log=tmp / "sqlite.log")
    dep = Deployment("embedded SQLite server", [sqlite_base], {"server": [sqlite_proc.pid]})
    cells.extend(measure_all(dep, clients, seconds, "sq"))
    STARTED.stop(sqlite_proc)
    # The embedded engine on PostgreSQL (one process, role all).
    url = pg.new_database("embedded")
    prepare_database(url, CONFIG)
    proc, base = start_server(url, log=tmp / "embedded-pg.log")
    dep = Deployment("embedded PostgreSQL server", [base], {"server": [proc.pid]}, url, pg)
    cells.extend(measure_all(dep, clients, seconds, "pe"))
    STARTED.stop(proc)
    # (b)-(d) one, two, three replicas and the trainer.
    url = pg.new_database("scaled")
    prepare_database(url, CONFIG)
    trainer = start_trainer(url, tmp / "trainer.log")
    replicas = [start_server(url, role="replica", log=tmp / "replicas.log") for _ in range(3)]
    watcher = ModelWatcher(url)
    acks: list[tuple[str, float]] = []
    try:
        for n in (1, 2, 3):
            dep = Deployment(f"{n} PG replica{'s' if n > 1 else ''} + trainer", [b for _, b in replicas[:n]],
                             {"replicas": [p.pid for p, _ in replicas[:n]], "trainer": [trainer.pid]}, url, pg)
            for cell in measure_all(dep, clients, seconds, f"r{n}"):
                cells.append(cell)
                acks.extend(cell.acks)
        latency = reward_to_learned(url, acks, watcher)
    finally:
        watcher.close()
        for p, _ in replicas:
            STARTED.stop(p)
        STARTED.stop(trainer)
    return cells, latency


def print_header(args: argparse.Namespace) -> None:
    """The machine and the settings."""
    print(f"\n## bench/scale.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print(f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), load average "
          f"{os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}, PostgreSQL from {args.pg_bin}, "
          f"keep-alive http.client threads (x1 or x{args.clients}) in 1 load-generator process, "
          f"{args.seconds:g} s per cell, "
          f"rewardWaitTime {WAIT}, modelExportFrequency PT1S; PostgreSQL synchronous_commit "
          f"{'on' if args.pg_sync else 'off'} (SQLite synchronous=NORMAL).\n")


def print_cells(cells: list[Cell], latency: dict[str, float]) -> None:
    """The throughput table, the capacity on paper and reward-to-learned."""
    base = {c.workload: c for c in cells if c.deployment == "embedded SQLite server"}
    print("### Throughput and latency over HTTP (baseline: the embedded SQLite server)\n")
    print("| deployment | workload | req/s | vs SQLite | rank p50 ms | p99 ms | reward p50 ms | p99 ms "
          "| CPU ms/req: server or replicas | PostgreSQL | trainer | load gen | total |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cells:
        server = c.cpu_ms.get("server", c.cpu_ms.get("replicas", 0.0))
        pg, trainer, load = c.cpu_ms.get("PostgreSQL"), c.cpu_ms.get("trainer"), c.cpu_ms["load generator"]
        total = server + (pg or 0) + (trainer or 0) + load
        ratio = c.rps / base[c.workload].rps
        print(f"| {c.deployment} | {c.workload} | {c.rps:,.0f} | {ratio:.2f}x | {c.rank_p50:.2f} | {c.rank_p99:.2f} "
              f"| {_f(c.reward_p50)} | {_f(c.reward_p99)} | {server:.2f} | {_f(pg)} | {_f(trainer)} | {load:.2f} "
              f"| {total:.2f} |")
    print("\nCapacity on paper (rank+reward, from the CPU per request above; one core = 1,000 CPU ms/s):\n")
    print("| deployment | req/s per replica core | req/s per PostgreSQL core | trainer ceiling req/s (one core) |")
    print("|---|---:|---:|---:|")
    for c in cells:
        if c.workload.startswith("rank+reward") and "replicas" in c.cpu_ms:
            print(f"| {c.deployment} | {1000 / c.cpu_ms['replicas']:,.0f} | {1000 / c.cpu_ms['PostgreSQL']:,.0f} "
                  f"| {1000 / max(c.cpu_ms['trainer'], 1e-9):,.0f} |")
    print("\n### Reward to learned (replica rank+reward cells; both slots rewarded in one call)\n")
    print("| from the acknowledged reward to | p50 s | p99 s |")
    print("|---|---:|---:|")
    print(f"| the event learned in the log (labels, learning order committed) | {latency['log_p50']:.3f} "
          f"| {latency['log_p99']:.3f} |")
    print(f"| the first published model containing it (NOTIFY received; export every 1 s) | "
          f"{latency['model_p50']:.3f} | {latency['model_p99']:.3f} |")
    print(f"\n{latency['n']:,} events.\n", flush=True)


def print_drain(drain: dict[str, float]) -> None:
    """The trainer's throughput."""
    print("### Trainer throughput (seed catalog, due events preloaded, both slots rewarded)\n")
    print(f"Load average now {os.getloadavg()[0]:.1f}.\n")
    print("| events | seconds | events/s joined + learned | of which learning s | trainer CPU ms/event "
          "| PostgreSQL CPU ms/event | events/s per trainer CPU second | target |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {drain['events']:,} | {drain['seconds']:.2f} | {drain['rate']:,.0f} | {drain['learn_seconds']:.2f} "
          f"| {drain['trainer_cpu_ms']:.3f} | {drain['pg_cpu_ms']:.3f} | {1000 / drain['trainer_cpu_ms']:,.0f} "
          f"| >= 5,000/s: {'PASS' if drain['rate'] >= 5000 else 'MISS'} |", flush=True)


def print_learning(args: argparse.Namespace, cells: list[Cell], learning: list[Learning],
                   window: tuple[int, int]) -> None:
    """Learning through two replicas beside the embedded engine; the targets."""
    pace = f"{args.pace:g} visitors/s" if args.pace else "unpaced (as fast as the replicas answer)"
    print(f"\n### Learning through two replicas: {args.scenario}, {args.events:,} events x {args.seeds} seed(s), "
          f"{pace}\n")
    names = list(dict.fromkeys(run.backend for run in learning))
    width = min(len(run.curve) for run in learning)
    heads = " | ".join(f"{i * CURVE_WINDOW / 1000:g}k" for i in range(width))
    print(f"| backend | {heads} | accept rate, events {window[0]:,}-{window[1]:,} | vs embedded | events/s |")
    print("|---" * (width + 1) + "|---:|---:|---:|")
    mean = {n: statistics.mean(run.rate for run in learning if run.backend == n) for n in names}
    speed = {n: args.events / statistics.mean(run.seconds for run in learning if run.backend == n) for n in names}
    curve = {n: [statistics.mean(run.curve[i] for run in learning if run.backend == n) for i in range(width)]
             for n in names}
    embedded = mean[names[0]]
    for n in names:
        print(f"| {n} | " + " | ".join(f"{v:.3f}" for v in curve[n])
              + f" | {mean[n]:.3f} | {100 * (mean[n] / embedded - 1):+.1f} % | {speed[n]:,.0f} |")
    one_second = next(n for n in names if n.endswith("1s"))
    gap = abs(mean[one_second] / embedded - 1)
    print(f"\n- {'PASS' if gap <= 0.05 else 'MISS'}: two replicas with 1 s model export vs the embedded engine: "
          f"{100 * gap:.1f} % (target <= 5 %)")
    target = {c.deployment: c for c in cells if c.workload == "rank x1"}.get("1 PG replica + trainer")
    if target is not None:
        print(f"- {'PASS' if target.rank_p50 <= 2 else 'MISS'}: one replica's rank p50 over HTTP from one client "
              f"{target.rank_p50:.2f} ms (target <= 2 ms)")


def _f(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.2f}"


def main() -> int:
    """Run every part and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="load per cell (default 8)")
    parser.add_argument("--clients", type=int, default=6, help="client threads (default 6: divides 1, 2 and 3)")
    parser.add_argument("--drain-events", type=int, default=20000, help="events preloaded for the trainer")
    parser.add_argument("--scenario", default="seed-joint", help="scenario of the learning part")
    parser.add_argument("--events", type=int, default=3000, help="visitors per learning run (default 3000)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the learning part (default 3)")
    parser.add_argument("--pace", type=float, default=0.0, help="visitors per second in the learning part "
                        "(default 0: as fast as the replicas answer)")
    parser.add_argument("--parts", nargs="+", choices=["throughput", "trainer", "learning"],
                        default=["throughput", "trainer", "learning"], help="which parts to run (default all)")
    parser.add_argument("--pg-sync", action="store_true", help="PostgreSQL with synchronous_commit on (an fsync "
                        "per commit, as PERSONALIZER_SYNC=FULL on SQLite); default off, as SQLite's NORMAL")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (2 s cells, small drain, "
                        "1 seed of 1,000 visitors)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.drain_events, args.events, args.seeds = 2.0, 2000, 1000, 1
    window = (2500, 3000) if args.events >= 3000 else (args.events // 2, args.events)
    with cleaned_up(), tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        pg = PgCluster(synchronous_commit=args.pg_sync)
        args.pg_bin = str(pg.bin)
        try:
            print_header(args)
            cells: list[Cell] = []
            if "throughput" in args.parts:
                cells, latency = throughput_cells(pg, tmp, args.clients, args.seconds)
                print_cells(cells, latency)
            if "trainer" in args.parts:
                print_drain(trainer_throughput(pg, args.drain_events))
            if "learning" in args.parts:
                learning = learning_runs(pg, args.scenario, args.events, args.seeds, window, tmp, args.pace)
                print_learning(args, cells, learning, window)
        finally:
            STARTED.stop_all()
            pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
