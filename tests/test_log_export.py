"""The log export (issue 10): one exported event shape on both stores, ``python -m personalizer logs export``
(a real subprocess, beside a running server), the ``logs/events`` listing (paged by a cursor that stays valid
while events arrive; bad arguments a Personalizer 400 that changes nothing), the client's iteration against a
real server, and the dashboard's log rows read through it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from seed_data import both_rewards, seed_request
from server_fixtures import HEADERS, KEY, ProcessServer, ThreadedServer, rank_request
from timing import FakeClock

from personalizer.client import PersonalizerClient
from personalizer.contract import PersonalizerError
from personalizer.engine import LocalPersonalizer
from personalizer.interface import Personalizer
from personalizer.logexport import MAX_TOP, ExportedEvent, LogEventsPage, export_log, parse_time

ROOT = Path(__file__).resolve().parent.parent
HERO, SIDEBAR = "BigHeroPosition", "SmallSidebar"
V3 = "/personalizer/v1.1-preview.3"


# ---------------------------------------------------------------- a log with every kind of event

def _fill(engine: LocalPersonalizer, clock: FakeClock) -> dict[str, dict[str, Any]]:
    """Events of every status, late rewards included; returns what each one's export must say."""
    engine.update_service_configuration({"rewardWaitTime": "PT1M", "defaultReward": 0.0})
    engine.rank(seed_request("morning", "mobile", event_id="learned"))
    engine.reward("learned", both_rewards(0.25, 1 / 3))
    clock.advance(1)
    engine.rank(seed_request("evening", "tablet", event_id="partial"))
    engine.reward("partial", {"reward": [{"slotId": HERO, "value": 1.0}]})
    clock.advance(1)
    engine.rank(seed_request("night", "desktop", event_id="deferred", defer=True))
    clock.advance(1)
    engine.update_service_configuration({"learningMode": "LoggingOnly"})
    engine.rank(seed_request("afternoon", "mobile", event_id="logged"))
    engine.reward("logged", both_rewards(1.0, -1.0))
    engine.update_service_configuration({"learningMode": "Online"})
    clock.advance(120)
    engine.process_due()  # the partial event is learned with the default reward; the deferred one is discarded
    with pytest.raises(PersonalizerError) as late:
        engine.reward("partial", {"reward": [{"slotId": SIDEBAR, "value": 0.5}]})
    assert late.value.status == 409
    clock.advance(1)
    engine.rank(seed_request("morning", "tablet", event_id="pending"))
    return {
        "learned": {"status": "learned", "labels": [0.25, 1 / 3], "mode": "Online", "deferred": False,
                    "rewards": [(HERO, 0.25, False), (SIDEBAR, 1 / 3, False)]},
        "partial": {"status": "learned", "labels": [1.0, 0.0], "mode": "Online", "deferred": False,
                    "rewards": [(HERO, 1.0, False), (SIDEBAR, 0.5, True)]},
        "deferred": {"status": "discarded", "labels": None, "mode": "Online", "deferred": True, "rewards": []},
        "logged": {"status": "logged", "labels": [1.0, -1.0], "mode": "LoggingOnly", "deferred": False,
                   "rewards": [(HERO, 1.0, False), (SIDEBAR, -1.0, False)]},
        "pending": {"status": "pending", "labels": None, "mode": "Online", "deferred": False, "rewards": []},
    }


def _check_shape(engine: LocalPersonalizer, exported: list[dict[str, Any]], expected: dict[str, dict[str, Any]],
                 model_id: int | None = None) -> None:
    assert [e["eventId"] for e in exported] == list(expected)  # every status, in creation order
    learn_seqs = []
    for ev in exported:
        want, stored = expected[ev["eventId"]], engine.event(ev["eventId"])
        assert stored is not None
        # The shape round-trips through its declared model and through JSON text unchanged.
        assert ExportedEvent.model_validate(ev).model_dump() == ev == json.loads(json.dumps(ev))
        assert ev["request"] == stored.request and ev["request"]["contextFeatures"]
        assert ev["slots"] == [{"id": s["id"], "rewardActionId": s["rewardActionId"], "probability": s["probability"]}
                               for s in stored.response["slots"]]
        assert [s["id"] for s in ev["slots"]] == [HERO, SIDEBAR] and all(0 < s["probability"] <= 1 for s in ev["slots"])
        assert abs(parse_time(ev["created"], "created") - stored.created) < 1e-6 and ev["created"].endswith("Z")
        assert [(r["slotId"], r["value"], r["late"]) for r in ev["rewards"]] == want["rewards"]
        assert all(parse_time(r["received"], "received") >= stored.created - 1e-6 for r in ev["rewards"])
        assert (ev["status"], ev["labels"], ev["mode"], ev["deferred"]) == (
            want["status"], want["labels"], want["mode"], want["deferred"])
        assert (ev["learnSeq"] is not None) == (want["status"] == "learned")
        assert (ev["closed"] is None) == (want["status"] == "pending")
        assert ev["activated"] is None and ev["modelId"] == model_id
        if ev["learnSeq"] is not None:
            learn_seqs.append(ev["learnSeq"])
    assert learn_seqs == sorted(learn_seqs) and len(set(learn_seqs)) == len(learn_seqs)


def test_the_exported_shape_round_trips_on_sqlite(tmp_path: Path) -> None:
    clock = FakeClock()
    with LocalPersonalizer(tmp_path / "data", clock=clock) as engine:
        expected = _fill(engine, clock)
        exported = list(engine.iter_log_events(top=2))  # three pages
        _check_shape(engine, exported, expected)
        one_page = engine.log_events()
        assert one_page["value"] == exported and one_page["nextLink"] is None
        assert LogEventsPage.model_validate(one_page).model_dump() == one_page
        lines = io.StringIO()  # the command line's writer (requests spliced in as logged) says the same
        assert export_log(lines, tmp_path / "data") == 5 and _lines(lines.getvalue()) == exported


def test_the_exported_shape_round_trips_on_postgres(pg_url: str) -> None:
    clock = FakeClock()
    with LocalPersonalizer(pg_url, clock=clock) as engine:
        expected = _fill(engine, clock)
        exported = list(engine.iter_log_events(top=2))
        _check_shape(engine, exported, expected)
        lines = io.StringIO()
        assert export_log(lines, pg_url) == 5 and _lines(lines.getvalue()) == exported


# ---------------------------------------------------------------- the command line

def _export(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "personalizer", "logs", "export", *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, capture_output=True,
                          text=True, timeout=60)


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_logs_export_reads_the_log_of_a_running_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ProcessServer(data) as server, PersonalizerClient(server.base, KEY) as client:
        ids = []
        for i in range(30):
            ids.append(client.rank(rank_request(f"ev-{i:02d}"))["eventId"])
            if i % 3 == 0:
                client.reward(ids[-1], {"reward": [{"slotId": HERO, "value": 1.0}]})
        done = _export("--store", str(data))  # SQLite: a read-only reader beside the owning server
        assert done.returncode == 0, done.stderr
        events = _lines(done.stdout)
        assert [e["eventId"] for e in events] == ids  # each acknowledged rank exactly once, in creation order
        created = [parse_time(e["created"], "created") for e in events]
        assert created == sorted(created)
        assert [len(e["rewards"]) for e in events] == [1 if i % 3 == 0 else 0 for i in range(30)]
        # [start, end): an event's own created as start includes it, as end leaves it out.
        part = _export("--store", str(data), "--start", events[10]["created"], "--end", events[20]["created"],
                       "--out", str(tmp_path / "part.jsonl"))
        assert part.returncode == 0 and part.stdout == "" and part.stderr == ""
        assert [e["eventId"] for e in _lines((tmp_path / "part.jsonl").read_text())] == ids[10:20]
        naive = events[25]["created"].rstrip("Z")  # naive means UTC
        assert [e["eventId"] for e in _lines(_export("--store", str(data), "--start", naive).stdout)] == ids[25:]
        # The default store is serve's: $PERSONALIZER_HOME.
        assert _lines(_export(env={"PERSONALIZER_HOME": str(data), "PERSONALIZER_STORE": ""}).stdout) == events
        assert client.rank(rank_request("after-export"))["eventId"] == "after-export"  # the server kept serving
    assert len(_lines(_export("--store", str(data)).stdout)) == 31


@pytest.mark.parametrize(("args", "status", "says"), [
    (("--start", "yesterday"), 2, "--start 'yesterday' is not an ISO-8601 date-time"),
    (("--end", "2026-13-01"), 2, "--end '2026-13-01' is not an ISO-8601 date-time"),
    (("--store", "{missing}"), 1, "no event log in"),
    (("--store", "postgresql://nobody@127.0.0.1:1/none"), 1, "unreachable"),
    (("--out", "{missing}/out.jsonl"), 1, "cannot write"),
])
def test_logs_export_errors_are_one_line_and_an_exit_status(tmp_path: Path, args: tuple[str, ...], status: int,
                                                            says: str) -> None:
    data = tmp_path / "data"
    LocalPersonalizer(data).close()
    given = [a.replace("{missing}", str(tmp_path / "missing")) for a in args]
    done = _export(*(given if "--store" in given else ["--store", str(data), *given]))
    assert done.returncode == status and done.stdout == ""
    assert done.stderr.startswith("error: ") and says in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "missing").exists()  # a reader creates nothing


def test_logs_export_reads_postgres_beside_a_trainer_and_a_replica(pg_url: str, tmp_path: Path) -> None:
    from personalizer.pgstore import SETTLE_SECONDS
    from personalizer.scaled import ReplicaEngine, TrainerEngine

    trainer = TrainerEngine(pg_url)  # holds the owner lock: a reader that wanted it would be refused
    replica = ReplicaEngine(pg_url)
    try:
        assert replica.model_id is not None
        ids = [replica.rank(rank_request(f"pg-{i}"))["eventId"] for i in range(5)]
        replica.reward(ids[0], both_rewards(1.0, 0.0))
        done = _export("--store", pg_url, "--out", str(tmp_path / "pg.jsonl"))
        assert done.returncode == 0, done.stderr
        events = _lines((tmp_path / "pg.jsonl").read_text())
        assert [e["eventId"] for e in events] == ids
        assert {e["modelId"] for e in events} == {replica.model_id}  # the published model that ranked each
        assert events[0]["status"] == "learned" and events[0]["labels"] == [1.0, 0.0]
        # A replica lists the shared log too, staying SETTLE_SECONDS behind the database clock.
        time.sleep(SETTLE_SECONDS + 0.2)
        listed = list(replica.iter_log_events(top=2))
        assert [e["eventId"] for e in listed] == ids and listed[0]["labels"] == [1.0, 0.0]
    finally:
        replica.close()
        trainer.close()


# ---------------------------------------------------------------- the listing endpoint

@pytest.fixture(name="clocked_server")
def clocked_server_fixture(tmp_path: Path) -> Any:
    clock = FakeClock()
    engine = LocalPersonalizer(tmp_path / "data", clock=clock)
    try:
        with ThreadedServer(engine) as server:
            yield server, clock
    finally:
        engine.close()


def _rank_some(engine: LocalPersonalizer, clock: FakeClock, prefix: str, n: int) -> list[str]:
    out = []
    for i in range(n):
        clock.advance(1)
        out.append(engine.rank(rank_request(f"{prefix}-{i:02d}"))["eventId"])
    return out


def test_listing_pages_stay_exact_while_new_events_arrive(clocked_server: Any) -> None:
    server, clock = clocked_server
    engine = server.engine
    first = _rank_some(engine, clock, "a", 25)
    page = requests.get(f"{server.base}{V3}/logs/events", params={"top": 10}, headers=HEADERS, timeout=10).json()
    listed = [e["eventId"] for e in page["value"]]
    assert listed == first[:10] and page["nextLink"].startswith(f"{server.base}{V3}/logs/events?")
    arrived = _rank_some(engine, clock, "b", 5)  # the log grows between pages
    while page.get("nextLink"):
        page = requests.get(page["nextLink"], headers=HEADERS, timeout=10).json()
        listed += [e["eventId"] for e in page["value"]]
    assert listed == first + arrived  # nothing twice, nothing skipped, in creation order
    # Later: the last page's cursor lists exactly what came since.
    later = _rank_some(engine, clock, "c", 3)
    since = requests.get(f"{server.base}/personalizer/logs/events", headers=HEADERS, timeout=10,
                         params={"api-version": "2022-09-01-preview", "after": page["cursor"]}).json()
    assert [e["eventId"] for e in since["value"]] == later and since["nextLink"] is None
    # A time window, with the same cursor rules.
    window = requests.get(f"{server.base}{V3}/logs/events", headers=HEADERS, timeout=10, params={
        "start": since["value"][0]["created"], "end": since["value"][2]["created"]}).json()
    assert [e["eventId"] for e in window["value"]] == later[:2]


@pytest.mark.parametrize("params", [
    {"after": "not-a-cursor"}, {"after": "c1.bm9wZQ"}, {"after": "c1." + "A" * 200}, {"top": "0"},
    {"top": str(MAX_TOP + 1)}, {"top": "ten"}, {"start": "soon"}, {"end": "2026-02-30T00:00:00Z"},
    {"start": "2026-12-02T00:00:00Z", "end": "2026-12-01T00:00:00Z"},
])
def test_bad_listing_arguments_are_a_400_that_changes_nothing(clocked_server: Any, params: dict[str, str]) -> None:
    server, clock = clocked_server
    _rank_some(server.engine, clock, "x", 3)
    before = server.engine.stats()
    resp = requests.get(f"{server.base}{V3}/logs/events", params=params, headers=HEADERS, timeout=10)
    assert resp.status_code == 400 and resp.headers["x-ms-error-code"] == "BadRequest"
    assert resp.json()["error"]["code"] == "BadRequest" and resp.json()["error"]["message"]
    assert server.engine.stats() == before
    assert requests.get(f"{server.base}{V3}/logs/events", headers=HEADERS, timeout=10).status_code == 200
    # The retired SDK-internal upload endpoint is still a clear 501, and a key is still needed.
    assert requests.post(f"{server.base}{V3}/logs/interactions", headers=HEADERS, timeout=10).status_code == 501
    assert requests.get(f"{server.base}{V3}/logs/events", timeout=10).status_code == 401


def test_the_client_iterates_the_listing_of_a_real_server(clocked_server: Any) -> None:
    server, clock = clocked_server
    engine = server.engine
    engine.update_service_configuration({"rewardWaitTime": "PT1M"})
    ids = _rank_some(engine, clock, "it", 11)
    engine.reward(ids[3], both_rewards(1.0, 0.0))
    with PersonalizerClient(server.base, KEY) as client:
        assert isinstance(client, Personalizer) and isinstance(engine, Personalizer)
        remote = list(client.iter_log_events(top=4))  # three requests
        assert remote == list(engine.iter_log_events()) and [e["eventId"] for e in remote] == ids
        assert remote[3]["status"] == "learned" and remote[3]["rewards"][0]["value"] == 1.0
        page = client.log_events(top=5)
        assert [e["eventId"] for e in page["value"]] == ids[:5] and page["nextLink"]
        rest = client.log_events(after=page["cursor"], start=remote[2]["created"])
        assert [e["eventId"] for e in rest["value"]] == ids[5:] and rest["nextLink"] is None
        with pytest.raises(PersonalizerError) as bad:
            client.log_events(top=MAX_TOP + 1)
        assert (bad.value.code, bad.value.status) == ("BadRequest", 400)
        # The dashboard's log rows read the same through either backend; the CSV carries the events' ids.
        from personalizer.dashboard.log_trends import LogRows

        over_http, in_process = LogRows(client), LogRows(engine)
        over_http.refresh()
        in_process.refresh()
        a, b = over_http.frame(), in_process.frame()
        assert len(a) == 22 and a.drop(columns="time").equals(b.drop(columns="time"))
        assert set(over_http.with_event_ids(a)["eventId"]) == set(ids)
        version = over_http.version
        clock.advance(61)
        engine.process_due()  # the pending events close: the next read picks them up from its cursor
        assert over_http.refresh() > version and over_http.frame()["reward"].notna().all()
