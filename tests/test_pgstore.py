"""The PostgreSQL event log: chosen by URL, versioned schema, one engine per database, and the
same durability as SQLite: a SIGKILLed process loses no acknowledged reward, and the model a
restart rebuilds from the log alone is the one it had, weight for weight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from pg_fixtures import PgCluster
from seed_data import DURABILITY_WORKER, seed_request
from server_fixtures import KEY, ProcessServer, rank_request

from personalizer.client import PersonalizerClient
from personalizer.contract import PersonalizerError
from personalizer.engine import LocalPersonalizer
from personalizer.eventstore import EventStore, open_store
from personalizer.pgstore import SCHEMA_VERSION, PgEventLog, redact
from personalizer.store import EventLog

ROOT = Path(__file__).resolve().parent.parent
TIMES, DEVICES = ["morning", "afternoon", "evening", "night"], ["mobile", "tablet", "desktop"]


def test_a_url_means_postgres_and_a_directory_means_sqlite(tmp_path: Path, pg_url: str) -> None:
    sqlite_log, pg_log = open_store(tmp_path / "data"), open_store(pg_url)
    try:
        assert isinstance(sqlite_log, EventLog) and isinstance(pg_log, PgEventLog)
        assert isinstance(sqlite_log, EventStore) and isinstance(pg_log, EventStore)
        assert pg_log.schema_version() == SCHEMA_VERSION
    finally:
        sqlite_log.close()
        pg_log.close()


def test_the_store_variable_chooses_the_default(monkeypatch: pytest.MonkeyPatch, pg_url: str) -> None:
    monkeypatch.setenv("PERSONALIZER_STORE", pg_url)
    log = open_store()
    try:
        assert isinstance(log, PgEventLog)
    finally:
        log.close()


def test_passwords_never_show_in_messages() -> None:
    assert redact("postgresql://app:s3cret@db:5432/p") == "postgresql://app:***@db:5432/p"
    assert redact("postgresql://app@db/p") == "postgresql://app@db/p"


def test_the_schema_is_created_once_and_a_newer_one_is_refused(pg_url: str) -> None:
    PgEventLog(pg_url).close()
    PgEventLog(pg_url).close()  # reopening migrates nothing and keeps the data
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(PersonalizerError) as info:
        PgEventLog(pg_url)
    assert info.value.code == "DatabaseVersionNotSupported" and info.value.status == 503


def test_one_engine_per_database_and_unreachable_is_503(pg_url: str, pg_cluster: PgCluster) -> None:
    first = LocalPersonalizer(pg_url)
    try:
        with pytest.raises(PersonalizerError) as info:
            LocalPersonalizer(pg_url)
        assert info.value.status == 503 and "in use" in info.value.message
    finally:
        first.close()
    LocalPersonalizer(pg_url).close()  # released on close
    closed_port = f"postgresql://postgres:hidden@127.0.0.1:{pg_cluster.port + 1}/nothing"
    with pytest.raises(PersonalizerError) as info:
        PgEventLog(closed_port)
    assert info.value.status == 503 and "hidden" not in info.value.message




def _page(engine: LocalPersonalizer) -> list[dict[str, str]]:
    return [engine.greedy(seed_request(t, d)) for t in TIMES for d in DEVICES]


def _weights(engine: LocalPersonalizer) -> list[float]:
    vw = engine._vw
    return [vw.get_weight(i) for i in range(vw.num_weights())]


@pytest.mark.slow
def test_sigkill_on_postgres_loses_no_acknowledged_reward(pg_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", DURABILITY_WORKER, pg_url, str(ROOT / "tests")],
                            stdout=subprocess.PIPE, text=True, env=env)
    acknowledged: list[tuple[str, str, float]] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            _, event_id, slot, value = line.split()
            acknowledged.append((event_id, slot, float(value)))
            if len(acknowledged) >= 600:
                break
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-stream: the worker is still ranking and rewarding
        proc.wait(timeout=30)
    for line in proc.stdout.read().splitlines():  # acknowledgements still in the pipe
        parts = line.split()
        if len(parts) == 4:
            acknowledged.append((parts[1], parts[2], float(parts[3])))
    assert proc.returncode == -signal.SIGKILL

    with psycopg.connect(pg_url) as conn:
        logged = conn.execute("SELECT event_id, slot_id, value FROM rewards").fetchall()
    assert set(acknowledged) <= set(logged) and len(logged) == len(set(logged))

    with LocalPersonalizer(pg_url) as restarted:  # the killed session's owner lock went with it
        learned = restarted.stats()["learned"]
        assert learned > 200 and restarted.replayed_on_start > 0
        page, weights = _page(restarted), _weights(restarted)

    # A model rebuilt from the log alone (no checkpoint) is the restarted one, weight for weight.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DELETE FROM checkpoints")
    with LocalPersonalizer(pg_url) as rebuilt:
        assert rebuilt.replayed_on_start == learned
        assert _page(rebuilt) == page
        assert _weights(rebuilt) == weights


@pytest.mark.slow
def test_a_server_on_postgres_survives_sigkill(tmp_path: Path, pg_url: str) -> None:
    first = ProcessServer(tmp_path / "unused", extra_args=("--store", pg_url)).start()
    try:
        with PersonalizerClient(first.base, KEY, retries=0) as client:
            answer = client.rank(rank_request("evt-kill"))
            client.reward("evt-kill", {"reward": [{"slotId": "BigHeroPosition", "value": 1.0}]})
    finally:
        first.kill()
    with ProcessServer(tmp_path / "unused", extra_args=("--store", pg_url)) as second, \
            PersonalizerClient(second.base, KEY, retries=0) as client:
        assert client.rank(rank_request("evt-kill")) == answer  # the stored answer, from the shared log
        with pytest.raises(PersonalizerError) as info:
            client.rank(rank_request("evt-kill", device="desktop"))
        assert info.value.status == 409
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT slot_id, value FROM rewards WHERE event_id = 'evt-kill'").fetchall() == [
            ("BigHeroPosition", 1.0)]
