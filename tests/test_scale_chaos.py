"""Chaos on a scaled-out deployment, on real PostgreSQL with real processes: 3 ``serve --role replica``,
a leading trainer and a standby, ``rewardWaitTime`` 5 s, model export every 1 s.

Seeded mixed load (ranks, rewards with repeats, deferred events activated or left to be discarded)
where each call of one event goes to a different replica, as behind a round-robin load balancer. Mid-load
one replica and then the leading trainer are SIGKILLed; the load keeps going, a call that hits the dead
replica is retried on the next one (as the balancer would). Afterwards, from the log as
``python -m personalizer logs export`` writes it (and the store's models):

- every acknowledged rank is in the log once, with the answer the client got; every acknowledged
  reward is logged exactly once (late ones as late; only a call cut off by the kill may add one more row);
- the learning order is gapless and every event is closed: learned, or discarded (never activated);
- each learned event's labels are the aggregation (earliest) recomputed from its logged on-time rewards;
- every surviving replica serves the newest published model, which covers the whole log;
- that model equals one rebuilt from the log alone (learned events replayed in learning order into a
  fresh workspace with the same arguments): every weight equal, and the replicas' answers to a fixed
  set of probe requests (actions and probabilities) are the rebuilt model's.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from server_fixtures import KEY, rank_request
from test_scale_out import Deployment, leader_pid, wait_for

from personalizer.client import PersonalizerClient
from personalizer.contract import MultiSlotRankRequest, PersonalizerError, parse
from personalizer.engine import labeled_example
from personalizer.pgstore import PgEventLog
from personalizer.vw import workspace as vw_workspace
from personalizer.vw.encoding import encode_request

ROOT = Path(__file__).resolve().parents[1]

SEED = 20261204
WAIT_SECONDS = 5
SLOTS = ("BigHeroPosition", "SmallSidebar")
TIMES = ("morning", "afternoon", "evening", "night")
DEVICES = ("mobile", "tablet", "desktop")
WORKERS = 3


class ChaosLoad:
    """Seeded load over the replicas: what was acknowledged, and which calls were cut off mid-flight."""

    def __init__(self, clients: list[PersonalizerClient]) -> None:
        self.clients = clients
        self.dead: set[int] = set()  # replicas the load balancer has taken out (connection refused)
        self.ranked: dict[str, dict[str, Any]] = {}  # eventId -> the acknowledged answer
        self.rewards: Counter[tuple[str, str, float]] = Counter()  # acknowledged and logged on time
        self.late: Counter[tuple[str, str, float]] = Counter()  # answered 409: logged as late
        self.uncertain: Counter[tuple[str, str, float]] = Counter()  # cut off: may or may not be logged
        self.activated: set[str] = set()
        self.refused_activations: set[str] = set()  # 409: discarded before the activation came
        self.retried = 0
        self.held: list[tuple[int, int, tuple[str, Any]]] = []  # (event, call number, call) sent late
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.errors: list[str] = []

    def _call(self, first: int, fn: Any, on_cut_off: Any = None) -> Any:
        """Call ``fn(client)`` on replica ``first`` or, when it is dead, the next live one (round robin)."""
        n = len(self.clients)
        for k in range(2 * n):
            index = (first + k) % n
            if index in self.dead:
                continue
            try:
                return fn(self.clients[index])
            except PersonalizerError as exc:
                if exc.code not in ("ServiceUnreachable", "RequestTimeout"):  # the client's transport errors
                    raise
                # The replica died; the call may or may not have committed there. Retry elsewhere.
                with self.lock:
                    self.dead.add(index)
                    self.retried += 1
                if on_cut_off is not None:
                    on_cut_off()
        raise AssertionError("no replica answered")

    def event(self, i: int) -> None:
        """One visitor: rank, maybe activate, reward (some slots twice, some never); each call to the next replica."""
        rng = random.Random(SEED * 100_000 + i)
        event_id = f"chaos-{i}"
        deferred = rng.random() < 0.3
        body = rank_request(event_id, rng.choice(TIMES), rng.choice(DEVICES), defer=deferred)
        answer = self._call(i, lambda c: c.rank(body))
        with self.lock:
            self.ranked[event_id] = answer
        calls: list[tuple[str, Any]] = []
        for slot in SLOTS:
            if rng.random() < 0.8:
                calls.append((slot, rng.choice((0.0, 0.5, 1.0))))
                if rng.random() < 0.15:  # a second reward for the slot: logged, not learned (earliest)
                    calls.append((slot, rng.choice((0.25, 0.75))))
        if deferred and rng.random() < 0.8:  # the rest are never activated: discarded at the wait time
            calls.insert(rng.randrange(len(calls) + 1), ("activate", None))
        if calls and rng.random() < 0.05:  # the last call comes after the wait time: a late reward or activation
            with self.lock:
                self.held.append((i, len(calls), calls.pop()))
        self.send(i, calls)

    def send(self, i: int, calls: list[tuple[str, Any]], first: int = 1) -> None:
        """Event ``i``'s calls after its rank, the k-th to replica ``i + k`` (or the next live one)."""
        event_id = f"chaos-{i}"
        for k, (what, value) in enumerate(calls, start=first):
            if what == "activate":
                try:
                    self._call(i + k, lambda c: c.activate(event_id))
                    with self.lock:
                        self.activated.add(event_id)
                except PersonalizerError as exc:
                    assert exc.status == 409, exc
                    with self.lock:
                        self.refused_activations.add(event_id)
                continue
            key = (event_id, what, value)

            def cut_off(key: tuple[str, str, float] = key) -> None:
                with self.lock:
                    self.uncertain[key] += 1

            reward = {"reward": [{"slotId": what, "value": value}]}
            try:
                status = self._call(i + k, lambda c, r=reward: c.reward(event_id, r), cut_off)["status"]
                with self.lock:
                    if status in ("pending", "learned"):
                        self.rewards[key] += 1
                    # "duplicate": the event closed with this slot already rewarded; nothing is logged
            except PersonalizerError as exc:
                assert exc.status == 409, exc  # closed before this reward came: logged as late
                with self.lock:
                    self.late[key] += 1

    def worker(self, w: int) -> None:
        i = w
        while not self.stop.is_set():
            try:
                self.event(i)
            except Exception as exc:  # reported by the test, not swallowed
                with self.lock:
                    self.errors.append(f"event {i}: {exc!r}")
                return
            i += WORKERS

    def send_held(self) -> int:
        """Send the calls held back past their events' wait time; returns how many."""
        for i, k, call in self.held:
            self.send(i, [call], first=k)
        return len(self.held)

    def acknowledged(self) -> int:
        with self.lock:
            return len(self.ranked)


def _rebuild(url: str) -> tuple[Any, str, int]:
    """A fresh workspace with the published model's arguments, fed the learned events in learning order."""
    store = PgEventLog(url, own=False)
    try:
        newest = store.checkpoint_by_id(store.newest_checkpoint_id() or 0)
        assert newest is not None
        vw = vw_workspace.build(newest.arguments)
        n = 0
        for ev in store.learned_after(0):
            head, bodies, allowed, index = encode_request(ev.request, ev.event_id)
            chosen = [index[s["rewardActionId"]] for s in ev.response["slots"]]
            probs = [s["probability"] for s in ev.response["slots"]]
            vw_workspace.learn(vw, labeled_example(head, bodies, allowed, chosen, probs, ev.labels or [], ev.mode))
            n += 1
        return vw, newest.arguments, n
    finally:
        store.close()


def _expected_answer(vw: Any, request: dict[str, Any]) -> list[tuple[str, str, float]]:
    """What a replica ranking with ``vw`` answers for this request: (slot, action, probability) per slot."""
    req = parse(MultiSlotRankRequest, request, "InvalidRankRequest")
    canonical = json.loads(req.model_dump_json(by_alias=True, exclude={"event_id"}))
    head, bodies, allowed, _ = encode_request(canonical, request["eventId"])
    from personalizer.vw import encoding

    prediction = vw_workspace.predict(vw, head + [encoding.slot_line(b, a) for b, a in zip(bodies, allowed,
                                                                                            strict=True)])
    actions = [a["id"] for a in canonical["actions"]]
    return [(s["id"], actions[p[0][0]], float(p[0][1])) for s, p in zip(canonical["slots"], prediction, strict=True)]


@pytest.mark.slow
def test_chaos_three_replicas_two_trainers_sigkill_mid_load(pg_url: str, tmp_path: Path) -> None:
    started = time.monotonic()
    dep = Deployment(pg_url, tmp_path, replicas=3, trainers=2,
                     configuration={"rewardWaitTime": f"PT{WAIT_SECONDS}S", "modelExportFrequency": "PT1S"})
    load = ChaosLoad([PersonalizerClient(r.base, KEY, retries=0, timeout=10)
                      for r in dep.replicas])
    try:
        _chaos(dep, load, pg_url, started, tmp_path / "log.jsonl")
    finally:
        for client in load.clients:
            client.close()
        dep.stop()


def _chaos(dep: Deployment, load: ChaosLoad, pg_url: str, started: float, export: Path) -> None:
    """Load, the two kills, the drain and every check (the caller stops the deployment whatever happens)."""
    workers = [threading.Thread(target=load.worker, args=(w,), name=f"chaos-{w}") for w in range(WORKERS)]
    try:
        for w in workers:
            w.start()
        wait_for(lambda: load.acknowledged() >= 120 or load.errors, 60, "load")
        dep.replicas[0].kill()
        wait_for(lambda: load.acknowledged() >= 240 or load.errors, 60, "load after the replica died")
        leader = leader_pid(pg_url)
        killed = next(t for t in dep.trainers if t.proc.pid == leader)
        killed.kill()
        wait_for(lambda: (leader_pid(pg_url) or leader) != leader, 15, "the standby to take over")
        wait_for(lambda: load.acknowledged() >= 360 or load.errors, 60, "load after the trainer died")
    finally:
        load.stop.set()
        for w in workers:
            w.join(timeout=30)
    assert not load.errors, load.errors[:5]
    time.sleep(WAIT_SECONDS + 0.5)  # every event's wait is over: the held calls are late
    late_calls = load.send_held()
    load_seconds = time.monotonic() - started

    # Everything closes at its wait time; the new leader learns it and publishes a model covering the log.
    surviving = list(dep.replicas[1:])
    wait_for(lambda: _pending(pg_url) == 0, 3 * WAIT_SECONDS + 10, "every event to close")
    wait_for(lambda: dep.learned_upto() == dep.max_learn_seq(), 15, "a model covering the whole log")
    with psycopg.connect(pg_url) as conn:
        newest_id = int(conn.execute("SELECT MAX(id) FROM checkpoints").fetchone()[0])
    for replica in surviving:
        wait_for(lambda r=replica: requests.get(r.base + "/health", timeout=5).json().get("modelId")
                 == newest_id, 10, f"replica {replica.base} to serve model {newest_id}")

    _check_log(pg_url, load, export)

    # The served model is the one rebuilt from the log alone.
    rebuilt, arguments, replayed = _rebuild(pg_url)
    try:
        with psycopg.connect(pg_url) as conn:
            published, published_args, published_seq = conn.execute(
                "SELECT model, arguments, learn_seq FROM checkpoints WHERE id = %s", (newest_id,)).fetchone()
        assert published_args == arguments and published_seq == replayed
        # Every weight equal. (The bytes differ only in VW's progress-report counters, e.g. the loss
        # since the last progress line: a model that went through a checkpoint restarts those.)
        served = vw_workspace.load(bytes(published), arguments)
        try:
            assert served.num_weights() == rebuilt.num_weights()
            assert all(served.get_weight(i) == rebuilt.get_weight(i) for i in range(rebuilt.num_weights()))
        finally:
            vw_workspace.finish(served)
        probes = [rank_request(f"probe-{r}-{t}-{d}", t, d) for r in range(len(surviving))
                  for t in TIMES for d in DEVICES]
        for r, replica in enumerate(surviving):
            client = load.clients[dep.replicas.index(replica)]
            for probe in (p for p in probes if p["eventId"].startswith(f"probe-{r}-")):
                answer = client.rank(probe)
                assert [(s["id"], s["rewardActionId"], s["probability"]) for s in answer["slots"]] == \
                    _expected_answer(rebuilt, probe), probe["eventId"]
    finally:
        vw_workspace.finish(rebuilt)
    print(f"chaos: {len(load.ranked)} events ranked, {sum(load.rewards.values())} rewards on time, "
          f"{sum(load.late.values())} late of {late_calls} held, {len(load.activated)} activations, "
          f"{load.retried} calls retried on another replica; start, load and late calls {load_seconds:.1f} s, "
          f"total {time.monotonic() - started:.1f} s")


def _pending(url: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events WHERE status = 'pending'").fetchone()[0])


def _exported(url: str, out: Path) -> list[dict[str, Any]]:
    """The whole log as ``python -m personalizer logs export`` writes it (a real subprocess)."""
    subprocess.run([sys.executable, "-m", "personalizer", "logs", "export", "--store", url, "--out", str(out)],
                   check=True, timeout=60, cwd=ROOT)
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def _check_log(url: str, load: ChaosLoad, out: Path) -> None:
    """Every acknowledged call is in the exported log exactly once; closing and labels follow its rewards."""
    exported = _exported(url, out)
    seqs = sorted(e["learnSeq"] for e in exported if e["learnSeq"] is not None)
    events = {e["eventId"]: e for e in exported if e["eventId"].startswith("chaos-")}
    rewards = [(e["eventId"], r["slotId"], r["value"], r["late"]) for e in exported for r in e["rewards"]]

    # Ranks: every acknowledged one is logged with the answer the client got, and nothing else is.
    assert set(events) == set(load.ranked)
    for event_id, answer in load.ranked.items():
        assert events[event_id]["slots"] == answer["slots"], event_id

    # Rewards: exactly once each (a call cut off by the kill may have committed before its retry).
    on_time = Counter((e, s, v) for e, s, v, late in rewards if not late)
    late = Counter((e, s, v) for e, s, v, is_late in rewards if is_late)
    for key in set(on_time) | set(load.rewards) | set(late) | set(load.late):
        logged, acked, maybe = on_time[key] + late[key], load.rewards[key] + load.late[key], load.uncertain[key]
        assert acked <= logged <= acked + maybe, (key, logged, acked, maybe)
        assert late[key] >= load.late[key] and on_time[key] >= load.rewards[key], key

    # Learning order gapless; every event closed: learned, or discarded when never activated.
    assert seqs == list(range(1, len(seqs) + 1))
    earliest: dict[str, dict[str, float]] = {}
    for e, s, v, is_late in rewards:  # each event's rewards in arrival order
        if not is_late:
            earliest.setdefault(e, {}).setdefault(s, v)
    learned = 0
    for event_id, event in events.items():
        if event["deferred"] and event_id not in load.activated:
            assert event["status"] == "discarded" and event["learnSeq"] is None and event["labels"] is None, event_id
            continue
        assert not event["deferred"] or event["activated"] is not None, event_id
        assert event["status"] == "learned" and event["learnSeq"] is not None, (event_id, event["status"])
        slots = [slot["id"] for slot in event["slots"]]
        assert event["labels"] == [earliest.get(event_id, {}).get(s, 0.0) for s in slots], event_id
        learned += 1
    assert learned == len(seqs)
    assert load.refused_activations <= {e for e, ev in events.items() if ev["status"] == "discarded"}
