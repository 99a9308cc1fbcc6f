"""Commands and jobs through a scaled-out replica vs the embedded engine, measured in one run.

    python bench/scale_commands.py [--store postgresql://...] [--rounds 20] [--events 1000]

Without ``--store`` a throwaway PostgreSQL cluster is started (``initdb`` in a temp dir, as the tests
do) and removed afterwards. Two tables:

- command round trip over HTTP: ``reset_model``, ``update_policy`` (which runs the child-process
  trial on the replica and again in the trainer) and ``applyFromEvaluation`` (the policy and the
  model the evaluation's replay trained, installed by the trainer that ran it; embedded: in process)
  through one replica (``ThreadedServer`` around a ``ReplicaEngine``) with the trainer in its own
  process (``python -m personalizer train``), beside the same calls to the embedded server on the
  same database (role ``all``);
- an offline evaluation of the same log (``--events`` rewarded seed visitors): run by the embedded
  engine's manager vs created on the replica and run by the trainer process (time until a replica
  reads it finished).

Machines here are noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pg_fixtures import _bin_dir, _free_port  # noqa: E402
from server_fixtures import KEY, ThreadedServer  # noqa: E402
from timing import FakeClock, Ticking  # noqa: E402

from personalizer.client import PersonalizerClient  # noqa: E402
from personalizer.engine import LocalPersonalizer  # noqa: E402
from personalizer.evaluation import Evaluations  # noqa: E402
from personalizer.scaled import ReplicaEngine  # noqa: E402
from personalizer.server import API_VERSIONS  # noqa: E402
from personalizer.simulation import load_scenario, simulate  # noqa: E402

POLICIES = [{"name": "quadratic", "arguments": "--ccb_explore_adf -q ::"},
            {"name": "cubic-free", "arguments": "--ccb_explore_adf --cb_type mtr -q ::"}]
START, END = "2027-01-15T00:00:00Z", "2027-02-15T00:00:00Z"


@contextmanager
def throwaway_cluster() -> Iterator[str]:
    """A PostgreSQL cluster in a temp dir on a free loopback port (as the ``postgres`` user when root)."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL binaries not found: pass --store postgresql://...")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    directory = Path(tempfile.mkdtemp(prefix="personalizer-bench-pg-"))
    if as_postgres:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
    port, data = _free_port(), directory / "data"
    quiet = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "timeout": 60}
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync"], **quiet)  # type: ignore[arg-type]
    subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-o",
                    f"-p {port} -k {directory} -h 127.0.0.1 -c fsync=off", "-l", str(directory / "log"), "-w",
                    "start"], **quiet)  # type: ignore[arg-type]
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


def fresh_database(url: str, name: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name


def timed(call: Callable[[], Any], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        call()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def row(name: str, samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=10) if len(samples) > 1 else samples * 9
    return f"| {name} | {statistics.median(samples):.1f} | {q[8]:.1f} | {len(samples)} |"


def log_events(url: str, events: int) -> None:
    clock = FakeClock()
    engine = LocalPersonalizer(url, clock=clock)
    simulate(Ticking(engine, clock), load_scenario("seed"), events, seed=3)
    clock.advance(3600)
    engine.process_due()
    engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=None, help="a PostgreSQL server URL (default: a throwaway cluster)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()
    with (throwaway_cluster() if args.store is None else _given(args.store)) as server_url:
        run(server_url, args.rounds, args.events)


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


def run(server_url: str, rounds: int, events: int) -> None:
    url = fresh_database(server_url, "bench_scale_commands")
    log_events(url, events)
    policies = [POLICIES[i % 2] for i in range(rounds)]

    # Embedded (role all) on the same database, over HTTP.
    embedded = LocalPersonalizer(url)
    with ThreadedServer(embedded) as server, PersonalizerClient(server.base, KEY, retries=0) as client:
        emb_reset = timed(client.reset_model, rounds)
        it = iter(policies)
        emb_policy = timed(lambda: client.update_policy(next(it)), rounds)
        client.reset_policy()
    manager = Evaluations(embedded, persist=False)
    emb_eval, emb_create = [], []
    for n in range(2):  # the first in a process pays for imports; the second is warm
        t0 = time.perf_counter()
        manager.create(f"embedded-{n}", "bench", START, END, POLICIES)
        emb_create.append(time.perf_counter() - t0)
        done = manager.wait(f"embedded-{n}", timeout=600)
        emb_eval.append(time.perf_counter() - t0)
        assert done["status"] == "completed", done
    applies = max(3, rounds // 4)
    names = [POLICIES[i % 2]["name"] for i in range(applies)]
    it = iter(names)
    emb_apply = timed(lambda: manager.apply("embedded-1", next(it)), applies)
    manager.close()
    embedded.close()

    # One replica (this process) and the trainer (its own process).
    trainer = subprocess.Popen([sys.executable, "-m", "personalizer", "train", "--store", url, "--log-level",
                                "warning"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    replica = ReplicaEngine(url)
    try:
        deadline = time.monotonic() + 30
        while not replica.health_details()["trainer"] or replica.health_details()["trainer"][
                "heartbeatAgeSeconds"] > 2:
            if time.monotonic() > deadline:
                raise SystemExit("the trainer did not start")
            time.sleep(0.1)
        with ThreadedServer(replica) as server, PersonalizerClient(server.base, KEY, retries=0) as client:
            rep_reset = timed(client.reset_model, rounds)
            it = iter(policies)
            rep_policy = timed(lambda: client.update_policy(next(it)), rounds)
            client.reset_policy()
            q = {"api-version": API_VERSIONS[0]}
            auth = {"Ocp-Apim-Subscription-Key": KEY}
            body = {"name": "bench", "startTime": START, "endTime": END, "policies": POLICIES}
            rep_eval, rep_create = [], []
            for n in range(2):
                base = f"{server.base}/personalizer/evaluations/trainer-{n}"
                t0 = time.perf_counter()
                requests.put(base, json=body, headers=auth, params=q, timeout=60).raise_for_status()
                rep_create.append(time.perf_counter() - t0)
                while requests.get(base, headers=auth, params=q, timeout=60).json()["status"] in (
                        "Running", "NotSubmitted"):
                    time.sleep(0.05)
                rep_eval.append(time.perf_counter() - t0)
            it = iter(names)
            rep_apply = timed(lambda: client.apply_from_evaluation("trainer-1", next(it)), applies)
    finally:
        replica.close()
        trainer.terminate()
        trainer.wait(timeout=30)

    print(f"Command round trip over HTTP, ms ({rounds} calls each; one replica + trainer process vs embedded):\n")
    print("| call | p50 | p90 | n |\n|---|---|---|---|")
    for name, samples in (("reset_model, embedded", emb_reset), ("reset_model, replica -> trainer", rep_reset),
                          ("update_policy, embedded", emb_policy),
                          ("update_policy, replica -> trainer", rep_policy),
                          ("applyFromEvaluation (policy + the replay's model), embedded", emb_apply),
                          ("applyFromEvaluation (policy + the replay's model), replica -> trainer", rep_apply)):
        print(row(name, samples))
    reset_ratio = statistics.median(rep_reset) / statistics.median(emb_reset)
    policy_ratio = statistics.median(rep_policy) / statistics.median(emb_policy)
    apply_ratio = statistics.median(rep_apply) / statistics.median(emb_apply)
    print(f"\nRatios (replica / embedded, p50): reset_model {reset_ratio:.2f}x, update_policy {policy_ratio:.2f}x, "
          f"applyFromEvaluation {apply_ratio:.2f}x")
    print(f"\nEvaluation of {events} logged events, 2 custom policies (create to finished, s):\n")
    print("| run | embedded (create) | replica -> trainer (create on the replica) | ratio |\n|---|---|---|---|")
    for n, label in enumerate(("first in its process", "second (warm)")):
        print(f"| {label} | {emb_eval[n]:.2f} ({emb_create[n]:.2f}) | {rep_eval[n]:.2f} ({rep_create[n]:.2f}) |"
              f" {rep_eval[n] / emb_eval[n]:.2f}x |")


if __name__ == "__main__":
    main()
