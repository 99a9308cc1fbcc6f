"""A real process killed with SIGKILL mid-stream loses no acknowledged reward, and its model comes back."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from seed_data import DURABILITY_WORKER, seed_request

from personalizer.engine import LocalPersonalizer

ROOT = Path(__file__).resolve().parent.parent


TIMES, DEVICES = ["morning", "afternoon", "evening", "night"], ["mobile", "tablet", "desktop"]


def _page(engine: LocalPersonalizer) -> list[dict[str, str]]:
    return [engine.greedy(seed_request(t, d)) for t in TIMES for d in DEVICES]


def _weights(engine: LocalPersonalizer) -> list[float]:
    vw = engine._vw
    return [vw.get_weight(i) for i in range(vw.num_weights())]


@pytest.mark.slow
def test_sigkill_mid_stream_loses_no_acknowledged_reward(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", DURABILITY_WORKER, str(data), str(ROOT / "tests")],
                            stdout=subprocess.PIPE, text=True, env=env)
    acknowledged: list[tuple[str, str, float]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        _, event_id, slot, value = line.split()
        acknowledged.append((event_id, slot, float(value)))
        if len(acknowledged) >= 1500:
            break
    proc.send_signal(signal.SIGKILL)  # mid-stream: the worker is still ranking and rewarding
    proc.wait(timeout=30)
    acknowledged.extend(_drain(proc))
    assert proc.returncode == -signal.SIGKILL

    with closing(sqlite3.connect(data / "personalizer.sqlite3")) as db:
        logged = {(e, s, v) for e, s, v in db.execute("SELECT event_id, slot_id, value FROM rewards")}
    assert set(acknowledged) <= logged

    reference_dir = tmp_path / "reference"
    shutil.copytree(data, reference_dir)
    with LocalPersonalizer(data) as restarted:
        learned = restarted.stats()["learned"]
        assert learned > 500 and restarted.replayed_on_start > 0
        page, weights = _page(restarted), _weights(restarted)
        # Learning resumes: pending events still join their rewards and are learned.
        open_event = next(e for e in restarted.events() if e.status == "pending")
        restarted.reward(open_event.event_id, {"reward": [{"slotId": "SmallSidebar", "value": 1.0}]})
        assert restarted.stats()["learned"] == learned + 1

    # A model rebuilt from the log alone (no checkpoint) is the restarted one, weight for weight.
    with closing(sqlite3.connect(reference_dir / "personalizer.sqlite3")) as db:
        db.execute("DELETE FROM checkpoints")
        db.commit()
    with LocalPersonalizer(reference_dir) as rebuilt:
        assert rebuilt.replayed_on_start == learned
        assert _page(rebuilt) == page
        assert _weights(rebuilt) == weights


def _drain(proc: subprocess.Popen) -> list[tuple[str, str, float]]:
    """Acknowledgements printed before the kill landed and still in the pipe."""
    assert proc.stdout is not None
    out = []
    for line in proc.stdout.read().splitlines():
        parts = line.split()
        if len(parts) == 4:
            out.append((parts[1], parts[2], float(parts[3])))
    return out
