"""Scale-out on PostgreSQL: policy, model and log changes and evaluations accepted by any replica and
applied or run by the leading trainer; ``/health`` on every role.

Replicas are real HTTP servers on loopback (``ThreadedServer`` around ``ReplicaEngine``) and the
trainer is ``run_trainer`` on a thread, as in the contract suite; where the behaviour is about a
process dying, the trainers are ``python -m personalizer train`` subprocesses that the test SIGSTOPs
and SIGKILLs.
"""

from __future__ import annotations

import json
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
from server_fixtures import KEY, ROOT, ProcessServer, ThreadedServer, free_port, rank_request, wait_healthy
from test_scale_out import Trainer, leader_pid, wait_for
from timing import FakeClock, Ticking

from personalizer.client import PersonalizerClient
from personalizer.contract import PersonalizerError
from personalizer.engine import LocalPersonalizer
from personalizer.scaled import ReplicaEngine, TrainerEngine, run_trainer
from personalizer.server import API_VERSIONS
from personalizer.simulation import load_scenario, simulate
from personalizer.vw import workspace as vw_workspace

AUTH = {"Ocp-Apim-Subscription-Key": KEY}
QUADRATIC = {"name": "quadratic", "arguments": "--ccb_explore_adf -q ::"}
BOTH = {"reward": [{"slotId": "BigHeroPosition", "value": 1.0}, {"slotId": "SmallSidebar", "value": 0.0}]}


class TrainerThread:
    """``run_trainer`` (leader or standby) on a daemon thread, stopped by the test."""

    def __init__(self, url: str) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=run_trainer, args=(url,), kwargs={"stop": self.stop}, daemon=True)
        self.thread.start()
        wait_for(lambda: _heartbeat(url) is not None and _heartbeat(url)[1] < 1.5, 20, "the trainer to lead")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


class Replicas:
    """Replica servers on one database, with a client each (no retries: every answer is the first)."""

    def __init__(self, url: str, n: int = 2, **options: Any) -> None:
        self.engines = [ReplicaEngine(url, **options) for _ in range(n)]
        self.servers = [ThreadedServer(e).__enter__() for e in self.engines]
        self.clients = [PersonalizerClient(s.base, KEY, retries=0) for s in self.servers]

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for server in self.servers:
            server.__exit__()
        for engine in self.engines:
            engine.close()


def _heartbeat(url: str) -> tuple[str, float] | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT leader, extract(epoch FROM clock_timestamp()) - beat FROM trainer_heartbeat"
                           ).fetchone()
    return None if row is None else (row[0], float(row[1]))


def _rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def _error(call: Any, *args: Any) -> PersonalizerError:
    with pytest.raises(PersonalizerError) as info:
        call(*args)
    return info.value


@pytest.fixture
def deployment(pg_url: str) -> Iterator[tuple[str, Replicas, TrainerThread]]:
    """Two replicas and a leading trainer on a fresh database (settings and first model made first)."""
    LocalPersonalizer(pg_url).close()
    trainer = TrainerThread(pg_url)
    replicas = Replicas(pg_url)
    try:
        yield pg_url, replicas, trainer
    finally:
        replicas.close()
        trainer.close()


# ---------------------------------------------------------------- commands

def test_a_policy_update_through_one_replica_is_applied_by_the_trainer_and_served_by_the_other(
        deployment: tuple[str, Replicas, TrainerThread]) -> None:
    url, replicas, _ = deployment
    a, b = replicas.clients
    before = b.get_policy()
    answer = a.update_policy(QUADRATIC)
    assert answer["name"] == "quadratic" and "-q ::" in answer["arguments"]
    assert b.get_policy() == answer  # the other replica serves it at once (it re-reads the published model)
    assert a.model_properties()["creationTime"] == b.model_properties()["creationTime"]
    late_replica = ReplicaEngine(url)  # one started later reports the same creation (the policy change's)
    try:
        assert late_replica.model_properties() == replicas.engines[0].model_properties()
    finally:
        late_replica.close()
    (kind, state, result), = _rows(url, "SELECT kind, state, result FROM commands")
    assert (kind, state, json.loads(result)) == ("updatePolicy", "done", answer)
    # The trainer made and published the model: the newest checkpoint runs the new arguments.
    (reason, arguments), = _rows(url, "SELECT reason, arguments FROM checkpoints ORDER BY id DESC LIMIT 1")
    assert reason == "policy" and arguments == answer["arguments"]
    assert {e.model_id for e in replicas.engines} == {_rows(url, "SELECT MAX(id) FROM checkpoints")[0][0]}
    history = b.policy_history()
    assert history[0]["action"] == "update" and history[0]["after"]["arguments"] == answer["arguments"]
    # Rollback through the other replica: back to the policy before, recorded as a change of its own.
    rolled = b.rollback_policy(history[0]["id"])
    assert rolled["action"] == "rollback" and a.get_policy() == before
    assert _error(a.rollback_policy, history[0]["id"]).code == "PolicyAlreadyActive"  # checked on the replica
    assert a.reset_policy() == before


def test_a_bad_policy_is_a_400_on_the_replica_and_queues_nothing(
        deployment: tuple[str, Replicas, TrainerThread]) -> None:
    url, replicas, _ = deployment
    a, b = replicas.clients
    before = a.get_policy()
    assert _error(a.update_policy, {"name": "x", "arguments": "--daemon"}).code == "InvalidPolicyConfiguration"
    assert _error(b.update_policy, {"name": "x"}).code == "InvalidPolicyContract"
    aborts = _error(a.update_policy, {"name": "abort", "arguments": "--ccb_explore_adf --nn 1 --bag 2"})
    assert (aborts.code, aborts.status) == ("InvalidPolicyConfiguration", 400) and "trial" in aborts.message
    assert _error(b.import_model, b"garbage").code == "InvalidModelImportFormat"
    assert _error(a.rollback_policy, "999").status == 404
    assert _rows(url, "SELECT COUNT(*) FROM commands") == [(0,)]
    assert b.get_policy() == before


def test_without_a_trainer_a_command_is_a_503_and_is_never_applied_later(pg_url: str) -> None:
    LocalPersonalizer(pg_url).close()
    replicas = Replicas(pg_url, n=1, leaderless_grace=0.5)
    try:
        client = replicas.clients[0]
        default = client.get_policy()
        resp = requests.put(f"{replicas.servers[0].base}/personalizer/v1.1-preview.3/configurations/policy",
                            json=QUADRATIC, headers=AUTH, timeout=30)
        assert resp.status_code == 503 and resp.headers["Retry-After"]
        error = resp.json()["error"]
        assert error["code"] == "ServiceUnavailable" and "no trainer is running" in error["message"]
        assert _error(client.reset_model).status == 503
        assert _rows(pg_url, "SELECT kind, state FROM commands ORDER BY id") == [
            ("updatePolicy", "cancelled"), ("resetModel", "cancelled")]
        trainer = TrainerThread(pg_url)  # a trainer that starts later applies none of them
        try:
            trainer.stop.wait(1.0)
            assert client.get_policy() == default
            assert _rows(pg_url, "SELECT DISTINCT state FROM commands") == [("cancelled",)]
            assert _rows(pg_url, "SELECT COUNT(*) FROM checkpoints WHERE reason IN ('policy', 'reset')") == [(0,)]
        finally:
            trainer.close()
    finally:
        replicas.close()


def test_serve_command_timeout_sets_how_long_a_replica_waits_for_the_trainer(pg_url: str, tmp_path: Path) -> None:
    """``serve --role replica --command-timeout S``: without a trainer the change is cancelled after S
    seconds (before the 3 s leaderless grace), and the 503 says so."""
    LocalPersonalizer(pg_url).close()
    with ProcessServer(tmp_path / "data", extra_args=("--store", pg_url, "--role", "replica",
                                                      "--command-timeout", "1.5")) as server:
        resp = requests.delete(f"{server.base}/personalizer/v1.0/model", headers=AUTH, timeout=30)
        assert resp.status_code == 503, resp.text
        assert "did not apply it within 1.5 s" in resp.json()["error"]["message"]
    assert _rows(pg_url, "SELECT kind, state FROM commands") == [("resetModel", "cancelled")]


def test_a_replica_finds_its_store_in_the_environment_as_the_readme_starts_it(pg_url: str, tmp_path: Path) -> None:
    """README: ``export PERSONALIZER_STORE=postgresql://...`` then ``serve --role replica --port N``."""
    LocalPersonalizer(pg_url).close()
    port = free_port()
    env = {**os.environ, "PERSONALIZER_STORE": pg_url, "PERSONALIZER_KEY": KEY,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(tmp_path / "replica.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "personalizer", "serve", "--role", "replica", "--port",
                                 str(port), "--log-level", "warning"], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc=proc)
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
        assert health["role"] == "replica" and health["store"] == "postgresql"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_standby_applies_the_commands_queued_when_the_leader_is_killed(pg_url: str, tmp_path: Path) -> None:
    LocalPersonalizer(pg_url).close()
    trainers = [Trainer(pg_url, tmp_path / f"trainer-{i}.log") for i in range(2)]
    replicas = Replicas(pg_url, n=2)
    try:
        leader = wait_for(lambda: leader_pid(pg_url), 30, "a trainer to lead")
        wait_for(lambda: _heartbeat(pg_url) is not None, 20, "the leader's heartbeat")
        killed = next(t for t in trainers if t.proc.pid == leader)
        killed.proc.send_signal(signal.SIGSTOP)  # frozen: it still holds the lock, commands queue up
        answers: dict[str, Any] = {}

        def call(name: str, fn: Any, *args: Any) -> None:
            try:
                answers[name] = fn(*args)
            except PersonalizerError as exc:
                answers[name] = exc

        a, b = replicas.clients
        callers = [threading.Thread(target=call, args=("policy", a.update_policy, QUADRATIC))]
        callers[0].start()
        wait_for(lambda: _rows(pg_url, "SELECT COUNT(*) FROM commands")[0][0] == 1, 10, "the first command")
        callers.append(threading.Thread(target=call, args=("reset", b.reset_model)))
        callers[1].start()
        wait_for(lambda: _rows(pg_url, "SELECT COUNT(*) FROM commands WHERE state = 'queued'")[0][0] == 2, 10,
                 "both commands to queue")
        killed.kill()  # SIGKILL: its session dies, the standby takes over and applies the queue in order
        for caller in callers:
            caller.join(timeout=30)
        assert answers["policy"]["name"] == "quadratic" and answers["reset"] is None, answers
        assert (leader_pid(pg_url) or leader) != leader
        assert _rows(pg_url, "SELECT kind, state FROM commands ORDER BY id") == [
            ("updatePolicy", "done"), ("resetModel", "done")]
        reasons = [r for r, in _rows(pg_url, "SELECT reason FROM checkpoints WHERE reason <> 'periodic' ORDER BY id")]
        assert reasons[-2:] == ["policy", "reset"]
        assert b.get_policy()["name"] == "quadratic"
    finally:
        replicas.close()
        for trainer in trainers:
            trainer.kill()


def test_a_model_imported_through_a_replica_is_served_by_every_replica(
        deployment: tuple[str, Replicas, TrainerThread]) -> None:
    url, replicas, _ = deployment
    a, b = replicas.clients
    for i in range(5):  # learn something so the exported model differs from a fresh one
        event = a.rank(rank_request(f"learn-{i}"))["eventId"]
        b.reward(event, BOTH)
    model = a.export_model()
    a.reset_model()
    b.import_model(model)
    (cp_id, reason, stored), = _rows(url, "SELECT id, reason, model FROM checkpoints ORDER BY id DESC LIMIT 1")
    assert reason == "import"
    for engine, client in zip(replicas.engines, replicas.clients, strict=True):
        wait_for(lambda e=engine: e.model_id == cp_id, 10, "every replica to load the imported model")
        assert client.export_model() == bytes(stored)


def test_deleting_the_log_through_a_replica(deployment: tuple[str, Replicas, TrainerThread]) -> None:
    url, replicas, _ = deployment
    a, b = replicas.clients
    for i in range(3):
        b.reward(a.rank(rank_request(f"old-{i}"))["eventId"], BOTH)
    pending = a.rank(rank_request("still-pending"))["eventId"]
    assert b.delete_logs() == 3
    assert [e for e, in _rows(url, "SELECT event_id FROM events")] == [pending]
    # The learning order goes on after the checkpoint that covered the deleted events: the trainer learns
    # a new event (it would never replay one numbered from 1 again).
    covered = _rows(url, "SELECT MAX(learn_seq) FROM checkpoints")[0][0]
    assert covered >= 3
    a.reward(b.rank(rank_request("new"))["eventId"], BOTH)
    assert _rows(url, "SELECT learn_seq FROM events WHERE event_id = 'new'") == [(covered + 1,)]
    wait_for(lambda: _rows(url, "SELECT learned FROM trainer_heartbeat") == [(covered + 1,)], 10,
             "the trainer to learn the new event")


def test_configuration_changes_through_any_replica_are_merged_and_applied_everywhere(
        deployment: tuple[str, Replicas, TrainerThread]) -> None:
    url, replicas, _ = deployment
    a, b = replicas.clients
    a.update_service_configuration({"explorationPercentage": 0.1, "modelExportFrequency": "PT1S"})
    b.update_service_configuration({"defaultReward": 0.25})  # merged into A's change, not over it
    merged = a.get_service_configuration()
    assert (merged["explorationPercentage"], merged["modelExportFrequency"], merged["defaultReward"]) == (
        0.1, "PT1S", 0.25)
    # Every replica serves with the new exploration without being asked (the NOTIFY), and so does the trainer:
    # the next model it publishes runs with it.
    for engine in replicas.engines:
        wait_for(lambda e=engine: "--epsilon 0.1" in e.arguments, 10, "every replica to apply the exploration")
    b.reward(a.rank(rank_request("after"))["eventId"], BOTH)
    wait_for(lambda: "--epsilon 0.1" in _rows(url, "SELECT arguments FROM checkpoints ORDER BY id DESC LIMIT 1")[0][0],
             10, "the trainer to publish a model with the new exploration")


# ---------------------------------------------------------------- evaluations and feature importances

START, END = "2027-01-15T08:00:00Z", "2027-01-16T00:00:00Z"


def _logged(url: str, events: int = 200) -> None:
    """Rewarded seed-scenario visitors in the log, one a minute from 2027-01-15 (an embedded engine)."""
    clock = FakeClock()
    engine = LocalPersonalizer(url, clock=clock)
    simulate(Ticking(engine, clock), load_scenario("seed"), events, seed=3)
    clock.advance(3600)
    engine.process_due()
    engine.close()


def test_an_evaluation_created_on_one_replica_runs_in_the_trainer_and_reads_on_the_other(pg_url: str) -> None:
    _logged(pg_url)
    replicas = Replicas(pg_url)
    q = {"api-version": API_VERSIONS[0]}
    a, b = (f"{s.base}/personalizer" for s in replicas.servers)
    try:
        body = {"name": "look", "startTime": START, "endTime": END,
                "policies": [{"name": "less", "arguments": "--ccb_explore_adf -q :: --epsilon 0.1"}]}
        created = requests.put(f"{a}/evaluations/e1", json=body, headers=AUTH, params=q, timeout=30)
        assert created.status_code == 200, created.text
        assert created.json()["status"] in ("Pending", "pending", "Running", "notSubmitted") or created.json()
        again = requests.put(f"{b}/evaluations/e1", json=body, headers=AUTH, params=q, timeout=30)
        assert again.status_code == 409  # the id is taken, whichever replica is asked
        bad = requests.put(f"{b}/evaluations/e2", json={**body, "policies": [{"name": "x", "arguments": "--daemon"}]},
                           headers=AUTH, params=q, timeout=30)
        assert bad.status_code == 400
        importance = requests.put(f"{b}/featureImportances/f1", json={"name": "fi", "startTime": START,
                                                                      "endTime": END}, headers=AUTH, params=q,
                                  timeout=30)
        assert importance.status_code == 200, importance.text
        time.sleep(1.0)  # no trainer yet: replicas never run a job
        assert requests.get(f"{b}/evaluations/e1", headers=AUTH, params=q, timeout=30).json()["progress"] == 0
        assert [r for r, in _rows(pg_url, "SELECT id FROM evaluations")] == ["e1"]

        trainer = TrainerThread(pg_url)
        try:
            def done(path: str) -> dict[str, Any] | None:
                answer = requests.get(f"{b}/{path}", headers=AUTH, params=q, timeout=30).json()
                return answer if answer["status"] not in ("pending", "Pending", "Running", "NotSubmitted") else None
            evaluation = wait_for(lambda: done("evaluations/e1"), 60, "the trainer to run the evaluation")
            assert evaluation["status"] == "Succeeded", evaluation
            assert {p["name"] for p in evaluation["content"]["value"]} >= {"Online", "less"}
            scores = wait_for(lambda: done("featureImportances/f1"), 60, "the trainer to run the feature importance")
            assert scores["status"] == "Succeeded" and scores["featureScores"], scores
            listed = requests.get(f"{a}/evaluations", headers=AUTH, params=q, timeout=30).json()["value"]
            assert [e["id"] for e in listed] == ["e1"] and listed[0]["status"] == "Succeeded"
            assert requests.delete(f"{a}/evaluations/e1", headers=AUTH, params=q, timeout=30).status_code == 204
            assert requests.get(f"{b}/evaluations/e1", headers=AUTH, params=q, timeout=30).status_code == 404
        finally:
            trainer.close()
    finally:
        replicas.close()


def test_a_job_deleted_while_the_trainer_runs_it_is_cancelled_and_not_written_back(pg_url: str) -> None:
    _logged(pg_url)
    trainer = TrainerEngine(pg_url)
    replica = ReplicaEngine(pg_url)
    from personalizer.scaled_jobs import TrainerJobs

    jobs = TrainerJobs(trainer)
    try:
        managers = replica.job_managers()
        managers[0].create("gone", "look", START, END)
        jobs.sync()  # the trainer picks it up and starts it
        managers[0].delete("gone")
        jobs.sync()  # ... and cancels it: the record is not written back
        jobs.evaluations._runner.close()
        assert _rows(pg_url, "SELECT COUNT(*) FROM evaluations") == [(0,)]
    finally:
        jobs.close()
        replica.close()
        trainer.close()


# ---------------------------------------------------------------- /health

def _weights(model: bytes, arguments: str) -> list[float]:
    vw = vw_workspace.load(model, arguments)
    try:
        return [vw.get_weight(i) for i in range(vw.num_weights())]
    finally:
        vw_workspace.finish(vw)


def test_applying_an_evaluation_through_a_replica_starts_from_the_trainers_replay_model(pg_url: str) -> None:
    """As embedded: the applied policy serves the model its replay trained, not a fresh one; a deleted
    evaluation's models are dropped by the trainer."""
    _logged(pg_url)
    trainer = TrainerEngine(pg_url)
    from personalizer.scaled_jobs import TrainerJobs

    jobs = TrainerJobs(trainer)
    replica = ReplicaEngine(pg_url)
    stop = threading.Event()

    def lead() -> None:  # run_trainer's loop, with the job managers in reach of the test
        while not stop.is_set():
            trainer.apply_commands()
            jobs.sync()
            stop.wait(0.05)

    leader = threading.Thread(target=lead, daemon=True)
    leader.start()
    try:
        evaluations, _ = replica.job_managers()
        less = {"name": "less", "arguments": "--ccb_explore_adf -q :: --epsilon 0.1"}
        evaluations.create("e1", "look", START, END, [less])
        assert evaluations.wait("e1", timeout=60)["status"] == "completed"
        replay = jobs.evaluations.replay_model("e1", "less")
        assert replay is not None

        policy = evaluations.apply("e1", "less")
        assert policy["name"] == "less" and evaluations.get("e1")["status"] == "optimalPolicyApplied"
        served = _weights(replica.export_model(), policy["arguments"])
        assert served == _weights(replay, policy["arguments"])
        replica.reset_model()
        assert _weights(replica.export_model(), policy["arguments"]) != served  # the replay's, not a fresh one

        evaluations.delete("e1")
        wait_for(lambda: jobs.evaluations.replay_model("e1", "less") is None, 10, "the trainer to drop its models")
    finally:
        stop.set()
        leader.join(timeout=30)
        jobs.close()
        replica.close()
        trainer.close()


def test_health_reports_role_store_model_and_the_trainers_heartbeat(pg_url: str, tmp_path: Path) -> None:
    LocalPersonalizer(pg_url, configuration={"rewardWaitTime": "PT5S"}).close()
    replica = ReplicaEngine(pg_url)
    trainer = TrainerEngine(pg_url)
    try:
        with ThreadedServer(replica) as server:
            for i in range(3):
                replica.rank(rank_request(f"due-{i}"))
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute("UPDATE events SET created = created - 60")  # all three are due now
            trainer.beat(force=True)

            def health_with(check: Any) -> dict[str, Any]:  # the replica re-reads the heartbeat every second
                return wait_for(lambda: (lambda h: h if check(h) else None)(
                    requests.get(f"{server.base}/health", timeout=10).json()), 10, "/health to show the heartbeat")

            health = health_with(lambda h: (h.get("trainer") or {}).get("backlog") == 3)
            assert health["status"] == "ok" and health["role"] == "replica" and health["store"] == "postgresql"
            assert "postgresql://" not in json.dumps(health) and "127.0.0.1" not in json.dumps(health)
            assert health["modelId"] == replica.model_id and health["modelAgeSeconds"] >= 0
            assert health["modelError"] is None
            beat = health["trainer"]
            assert beat["backlog"] == 3 and beat["leader"] == trainer.leader and beat["heartbeatAgeSeconds"] < 5
            trainer.step()
            trainer.beat(force=True)
            beat = health_with(lambda h: h["trainer"]["backlog"] == 0)["trainer"]
            assert beat["learnedEvents"] == 3
            with psycopg.connect(pg_url, autocommit=True) as conn:  # as if the trainer stopped a minute ago
                conn.execute("UPDATE trainer_heartbeat SET beat = beat - 60")
            stale = health_with(lambda h: h["status"] == "warning")
            assert any("heartbeat" in w for w in stale["warnings"]) and stale["trainer"]["heartbeatAgeSeconds"] > 60
            assert requests.get(f"{server.base}/health", timeout=10).status_code == 200
    finally:
        trainer.close()
        replica.close()
    clock = FakeClock()
    with LocalPersonalizer(tmp_path / "data", clock=clock) as engine, \
            ThreadedServer(engine, process_interval=3600) as server:  # nothing closes due events meanwhile
        engine.rank(rank_request())
        health = requests.get(f"{server.base}/health", timeout=10).json()
        assert (health["role"], health["store"], health["status"], health["backlog"]) == ("all", "sqlite", "ok", 0)
        clock.advance(601)  # past the default reward wait (10 minutes)
        health = requests.get(f"{server.base}/health", timeout=10).json()
        assert health["backlog"] == 1 and health["modelAgeSeconds"] >= 601


def test_an_evaluation_half_run_by_a_dead_leader_is_run_again_by_the_next(pg_url: str) -> None:
    """The record a killed leader left ``running`` is run from the start by the next leader's job runner."""
    from personalizer.scaled_jobs import TrainerJobs

    _logged(pg_url)
    replica = ReplicaEngine(pg_url)
    try:
        replica.job_managers()[0].create("half", "look", START, END)
        with psycopg.connect(pg_url, autocommit=True) as conn:  # as the dead leader left it
            text, = conn.execute("SELECT record FROM evaluations WHERE id = 'half'").fetchone()
            conn.execute("UPDATE evaluations SET record = %s WHERE id = 'half'",
                         (json.dumps({**json.loads(text), "status": "running", "progress": 0.4}),))
        trainer = TrainerEngine(pg_url)
        jobs = TrainerJobs(trainer)  # the new leader loads it and runs it again
        try:
            done = replica.job_managers()[0].wait("half", timeout=60)
            assert done["status"] == "completed" and done["progress"] == 1.0 and done["policyResults"], done
        finally:
            jobs.close()
            trainer.close()
    finally:
        replica.close()


def test_automatic_optimization_runs_once_in_the_leading_trainer_never_on_replicas(pg_url: str) -> None:
    """Replicas serve the schedule's status but never run it (N replicas would evaluate and apply N
    times); the leading trainer runs it once: an Auto evaluation run by its jobs, the winner applied as
    a policy command, recorded as automatic, with the replay's model."""
    _logged(pg_url)
    with LocalPersonalizer(pg_url) as engine:
        engine.update_service_configuration({**engine.get_service_configuration(),
                                             "isAutoOptimizationEnabled": True})
    fast = {"min_events": 10, "margin": -1.0, "poll_seconds": 0.1, "clock": lambda: 1_800_050_000.0}
    engines = [ReplicaEngine(pg_url) for _ in range(2)]
    servers = [ThreadedServer(e, auto_optimization=fast).__enter__() for e in engines]
    try:
        time.sleep(1.0)  # ten schedule checks per replica: the run is due, and no replica runs it
        assert engines[0].auto_optimization_state() == {}
        assert _rows(pg_url, "SELECT COUNT(*) FROM evaluations") == [(0,)]
        stop = threading.Event()
        trainer = threading.Thread(target=run_trainer, args=(pg_url,),
                                   kwargs={"stop": stop, "auto_optimization": fast}, daemon=True)
        trainer.start()
        try:
            run = wait_for(lambda: engines[1].auto_optimization_state().get("lastRun"), 60,
                           "the leading trainer to run automatic optimization")
            assert run["decision"] == "applied", run
            policy = engines[0].get_policy()
            assert policy["name"] == run["best"]["name"] and policy["arguments"] == run["best"]["arguments"]
            change = engines[1].policy_history(limit=1)[0]
            assert change["id"] == run["changeId"] and change["who"] == "auto"
            assert change["evaluationId"] == run["evaluationId"]
            rows = _rows(pg_url, "SELECT id FROM evaluations")
            assert rows == [(run["evaluationId"],)]
            status = requests.get(f"{servers[0].base}/personalizer/v1.0/configurations/service", headers=AUTH,
                                  timeout=30).json()
            assert status["isAutoOptimizationEnabled"] is True
            served = _weights(engines[0].export_model(), policy["arguments"])
            assert any(served), "the applied policy starts from the replay's model, not a fresh one"
        finally:
            stop.set()
            trainer.join(timeout=90)
    finally:
        for server in servers:
            server.__exit__()
        for e in engines:
            e.close()


def test_closing_a_replicas_manager_ends_a_wait_for_the_trainer(pg_url: str) -> None:
    """What lets a trainer that stops leading stop its schedule at once, not after the evaluation timeout."""
    _logged(pg_url)
    replica = ReplicaEngine(pg_url)
    try:
        evaluations, _ = replica.job_managers()
        evaluations.create("waits", "look", START, END)  # no trainer: it stays pending
        outcome: list[PersonalizerError] = []

        def wait() -> None:
            try:
                evaluations.wait("waits", timeout=600)
            except PersonalizerError as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        time.sleep(0.5)
        evaluations.close()
        waiter.join(timeout=10)
        assert not waiter.is_alive() and [e.status for e in outcome] == [503]
    finally:
        replica.close()


def test_automatic_optimization_is_refused_by_a_replicas_manager(pg_url: str) -> None:
    """A replica's evaluations manager never creates an automatic run (the app's schedule does not
    start on a replica; this is the second guard): the run is recorded as failed, the policy stays."""
    from personalizer.optimization import AutoOptimizer

    _logged(pg_url)
    replica = ReplicaEngine(pg_url)
    try:
        evaluations, _ = replica.job_managers()
        run = AutoOptimizer(replica, evaluations, min_events=10, clock=lambda: 1_800_000_000.0).optimize()
        assert run["decision"] == "failed" and "scaled-out" in run["reason"]
        assert _rows(pg_url, "SELECT COUNT(*) FROM evaluations") == [(0,)]
    finally:
        replica.close()
