"""Scale-out on PostgreSQL with real processes: two ``serve --role replica`` and ``train`` (leader and
standby) on loopback, one shared log. The contract holds across replicas; SIGKILLing a replica and the
leading trainer mid-load loses no acknowledged reward, keeps the learning order gapless, and the standby
takes over within seconds; the published model equals one rebuilt from the log alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from server_fixtures import KEY, ProcessServer, rank_request

from personalizer.client import PersonalizerClient
from personalizer.contract import PersonalizerError
from personalizer.engine import LocalPersonalizer
from personalizer.vw import workspace as vw_workspace

ROOT = Path(__file__).resolve().parent.parent
BOTH = {"reward": [{"slotId": "BigHeroPosition", "value": 1.0}, {"slotId": "SmallSidebar", "value": 0.0}]}


class Trainer:
    """``python -m personalizer train`` in a subprocess."""

    def __init__(self, url: str, log_path: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "personalizer", "train", "--store", url,
                                          "--log-level", "warning"], cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def leader_pid(url: str) -> int | None:
    """The OS pid of the trainer holding the owner lock (its lease connection names it)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT application_name FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid"
                           " WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE"
                           " 'personalizer-owner-%%'").fetchone()
    return int(row[0].rsplit("-", 1)[1]) if row else None


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Deployment:
    """A trainer (plus standbys) and replicas on one fresh database, stopped by the test."""

    def __init__(self, url: str, tmp: Path, replicas: int = 2, trainers: int = 1,
                 configuration: dict[str, Any] | None = None) -> None:
        if configuration is not None:  # settings and the first model before anything starts
            LocalPersonalizer(url, configuration=configuration).close()
        self.url = url
        self.trainers = [Trainer(url, tmp / f"trainer-{i}.log") for i in range(trainers)]
        wait_for(lambda: leader_pid(url), 30, "a trainer to lead")
        self.replicas = [ProcessServer(tmp / f"replica-{i}" / "data", extra_args=("--store", url, "--role", "replica"))
                         for i in range(replicas)]
        for replica in self.replicas:
            replica.data.parent.mkdir(parents=True, exist_ok=True)
            replica.start()
        self.clients = [PersonalizerClient(r.base, KEY, retries=0) for r in self.replicas]

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        for replica in self.replicas:
            replica.stop()
        for trainer in self.trainers:
            trainer.stop()

    def learned_upto(self) -> int:
        with psycopg.connect(self.url) as conn:
            return int(conn.execute("SELECT COALESCE(MAX(learn_seq), 0) FROM checkpoints").fetchone()[0])

    def max_learn_seq(self) -> int:
        with psycopg.connect(self.url) as conn:
            return int(conn.execute("SELECT COALESCE(MAX(learn_seq), 0) FROM events").fetchone()[0])


@pytest.fixture
def deployment(pg_url: str, tmp_path: Path) -> Iterator[Deployment]:
    """The README's way: an empty database, the trainer creates everything, configured through a replica."""
    dep = Deployment(pg_url, tmp_path)
    try:
        short = {"rewardWaitTime": "PT5S", "modelExportFrequency": "PT1S"}
        dep.clients[0].update_service_configuration(short)
        wait_for(lambda: all(c.get_service_configuration()["rewardWaitTime"] == "PT5S" for c in dep.clients), 10,
                 "every replica to apply the shared configuration")
        time.sleep(0.5)  # the trainer reads it on its next round (every 0.2 s when idle)
        yield dep
    finally:
        dep.stop()


def _error(call: Any, *args: Any) -> tuple[str, int]:
    with pytest.raises(PersonalizerError) as info:
        call(*args)
    return info.value.code, info.value.status


@pytest.mark.slow
def test_the_contract_holds_across_replicas(deployment: Deployment) -> None:
    a, b = deployment.clients
    first = a.rank(rank_request("evt-1"))
    assert b.rank(rank_request("evt-1")) == first  # the stored answer, from the other replica
    assert _error(b.rank, rank_request("evt-1", device="desktop")) == ("InvalidRankRequest", 409)
    assert b.reward("evt-1", {"reward": [{"slotId": "BigHeroPosition", "value": 1}]})["status"] == "pending"
    assert a.reward("evt-1", {"reward": [{"slotId": "SmallSidebar", "value": 0.5}]})["status"] == "learned"
    assert b.reward("evt-1", {"reward": [{"slotId": "SmallSidebar", "value": 0.5}]})["status"] == "duplicate"
    assert _error(a.reward, "never-ranked", BOTH) == ("ResourceNotFound", 404)
    assert _error(b.reward, "evt-1", {"reward": [{"slotId": "nope", "value": 1}]}) == ("InvalidRewardRequest", 400)

    deferred = a.rank(rank_request("evt-deferred", defer=True))["eventId"]
    assert b.reward(deferred, BOTH)["status"] == "pending"
    assert a.activate(deferred) == {"eventId": deferred, "status": "learned"}
    assert b.activate(deferred) == {"eventId": deferred, "status": "learned"}

    # The trainer learns both and publishes; every replica picks the model up.
    wait_for(lambda: deployment.learned_upto() >= 2, 10, "the trainer to publish a model with both events")
    newest = deployment.learned_upto()
    for replica in deployment.replicas:
        wait_for(lambda r=replica: requests.get(r.base + "/health", timeout=5).json().get("modelId"), 10,
                 "a replica to load a model")

    # An event left waiting closes at its wait time (the database's clock): its reward is then late.
    late = b.rank(rank_request("evt-late"))["eventId"]
    assert a.reward(late, {"reward": [{"slotId": "BigHeroPosition", "value": 1}]})["status"] == "pending"
    time.sleep(5.3)
    assert _error(b.reward, late, {"reward": [{"slotId": "SmallSidebar", "value": 1}]}) == (
        "InvalidRewardRequest", 409)
    wait_for(lambda: deployment.learned_upto() > newest, 10, "the late event's default-reward learning")
    with psycopg.connect(deployment.url) as conn:
        labels, status = conn.execute("SELECT labels, status FROM events WHERE event_id = 'evt-late'").fetchone()
        late_rows = conn.execute("SELECT late FROM rewards WHERE event_id = 'evt-late' ORDER BY id").fetchall()
        models = conn.execute("SELECT DISTINCT model_id FROM events WHERE model_id IS NOT NULL").fetchall()
    assert status == "learned" and labels == "[1.0, 0.0]" and late_rows == [(False,), (True,)]
    assert models  # events carry the id of the model that ranked them
    assert a.reset_model() is None  # applied by the trainer (tests/test_scale_commands.py)


@pytest.mark.slow
def test_sigkill_a_replica_and_the_leading_trainer_mid_load(pg_url: str, tmp_path: Path) -> None:
    dep = Deployment(pg_url, tmp_path, trainers=2,
                     configuration={"rewardWaitTime": "PT5S", "modelExportFrequency": "PT1S"})
    acknowledged: list[tuple[str, str, float]] = []
    ranked: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load(worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            live = [c for c, r in zip(dep.clients, dep.replicas, strict=True) if r.proc and r.proc.poll() is None]
            ranker, rewarder = live[n % len(live)], live[(n + 1) % len(live)]  # each call to another replica
            try:
                event = ranker.rank(rank_request(f"w{worker}-{n}"))["eventId"]
                with lock:
                    ranked.append(event)
                for slot, value in (("BigHeroPosition", float(n % 2)), ("SmallSidebar", float(n % 3 == 0))):
                    if n % 5 == 0 and slot == "SmallSidebar":
                        break  # some events wait for their default reward
                    rewarder.reward(event, {"reward": [{"slotId": slot, "value": value}]})
                    with lock:
                        acknowledged.append((event, slot, value))
            except (PersonalizerError, OSError):
                continue  # a killed replica's calls fail: not acknowledged, nothing to check

    workers = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    try:
        for w in workers:
            w.start()
        wait_for(lambda: len(acknowledged) >= 150, 30, "load")
        dep.replicas[0].kill()
        wait_for(lambda: len(acknowledged) >= 300, 30, "load after the replica died")
        leader = leader_pid(pg_url)
        killed = next(t for t in dep.trainers if t.proc.pid == leader)
        before = dep.max_learn_seq()
        killed.kill()
        t0 = time.monotonic()
        wait_for(lambda: (leader_pid(pg_url) or leader) != leader, 10, "the standby to take over")
        takeover = time.monotonic() - t0
        wait_for(lambda: dep.learned_upto() > before, 10, "the new leader to learn and publish")
        wait_for(lambda: len(acknowledged) >= 450, 30, "load after the trainer died")
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
    # Everything due closes and is learned and published by the new leader.
    time.sleep(5.5)
    wait_for(lambda: dep.learned_upto() == dep.max_learn_seq() and _pending(pg_url) == 0, 20,
             "the backlog to be learned and published")
    dep.stop()
    assert takeover < 5
    print(f"takeover {takeover:.2f} s; {len(ranked)} ranked, {len(acknowledged)} rewards acknowledged")

    with psycopg.connect(pg_url) as conn:
        rewards = conn.execute("SELECT event_id, slot_id, value, late FROM rewards ORDER BY id").fetchall()
        seqs = [r[0] for r in conn.execute("SELECT learn_seq FROM events WHERE learn_seq IS NOT NULL ORDER BY 1")]
        events = conn.execute("SELECT event_id, response, labels FROM events").fetchall()
    logged = [(e, s, v) for e, s, v, _ in rewards]
    assert set(acknowledged) <= set(logged)
    assert all(logged.count(a) == 1 for a in set(acknowledged))  # exactly once
    assert seqs == list(range(1, len(seqs) + 1))  # gapless
    on_time: dict[str, dict[str, float]] = {}
    for e, s, v, late in rewards:
        if not late:
            on_time.setdefault(e, {}).setdefault(s, v)  # earliest
    import json
    for event_id, response, labels in events:
        slots = [s["id"] for s in json.loads(response)["slots"]]
        assert json.loads(labels) == [on_time.get(event_id, {}).get(s, 0.0) for s in slots]
    assert set(ranked) <= {e for e, _, _ in events}

    # The published model equals one rebuilt from the log alone.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        published = bytes(conn.execute("SELECT model FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()[0])
        conn.execute("DELETE FROM checkpoints")
    with LocalPersonalizer(pg_url) as rebuilt:
        assert rebuilt.replayed_on_start == len(seqs)
        vw = vw_workspace.load(published, rebuilt.arguments)
        try:
            assert [vw.get_weight(i) for i in range(vw.num_weights())] == [
                rebuilt._vw.get_weight(i) for i in range(rebuilt._vw.num_weights())]
        finally:
            vw.finish()


def _pending(url: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events WHERE status = 'pending'").fetchone()[0])


def test_a_trainer_that_lost_its_lease_writes_nothing_more(pg_url: str) -> None:
    from personalizer.scaled import ReplicaEngine, TrainerEngine

    trainer = TrainerEngine(pg_url)
    replica = ReplicaEngine(pg_url)
    try:
        replica.update_service_configuration({"rewardWaitTime": "PT5S"})
        event = replica.rank(rank_request("evt-orphan"))["eventId"]
        with psycopg.connect(pg_url, autocommit=True) as conn:  # as if its session died (network, restart)
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE application_name = %s", (f"personalizer-owner-{os.getpid()}",))
            conn.execute("UPDATE events SET created = created - 60 WHERE event_id = %s", (event,))  # due now
        with pytest.raises(PersonalizerError) as info:
            trainer.step()
        assert info.value.status == 503 and "leadership" in info.value.message
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT status FROM events WHERE event_id = %s", (event,)).fetchone() == ("pending",)
        taken_over = TrainerEngine(pg_url)  # the lock went with the dead session: another trainer leads
        try:
            assert taken_over.step() == 1
        finally:
            taken_over.close()
    finally:
        replica.close()
        trainer.close()


def test_a_replica_keeps_its_model_when_a_new_one_does_not_load(pg_url: str) -> None:
    from personalizer.scaled import ReplicaEngine

    LocalPersonalizer(pg_url).close()
    replica = ReplicaEngine(pg_url)
    try:
        serving = replica.model_id
        assert serving is not None and replica.health_details()["modelError"] is None
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("INSERT INTO checkpoints (learn_seq, created, reason, arguments, model)"
                         " VALUES (0, 0, 'periodic', '--ccb_explore_adf', 'not a model'::bytea)")
        replica._refresh()
        health = replica.health_details()
        assert replica.model_id == serving and health["modelId"] == serving
        assert health["modelError"] and "did not load" in health["modelError"]
        assert replica.rank(rank_request())["slots"]  # still ranking with the old model
    finally:
        replica.close()
