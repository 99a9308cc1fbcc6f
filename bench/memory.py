"""Memory per pending event: N unrewarded ranks, live and reloaded after a restart (psutil RSS).

    python bench/memory.py [--events 100000]

Live: one engine ranks ``--events`` seed requests nobody rewards (the default 10-minute
reward wait time keeps them all pending); RSS after a warm-up and after the ranks.
Restart: two fresh processes open a copy of the data directory, one with the pending
events and one with them deleted (same model, same settings); the RSS difference is what
reloading the pending events costs. Both divide by the number of events.

The code that kept a VW example and the request per pending event is gone, so there is
no same-run baseline: the table repeats the issue's measurement of it (100,000 events:
+231 MB live, 808 MB RSS after a restart).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from personalizer.engine import _RECENT_EXAMPLES, LocalPersonalizer  # noqa: E402
from personalizer.simulation import load_scenario  # noqa: E402

# The seed quickstart's catalog, from its one source (personalizer/scenarios/seed.json).
_SEED = load_scenario("seed")
SEED_ACTIONS, SEED_SLOTS = _SEED.actions, _SEED.slots
TIMES, DEVICES = ["morning", "afternoon", "evening", "night"], ["mobile", "tablet", "desktop"]
OLD_LIVE_MB, OLD_RELOAD_MB = 231, 808  # the measurement of the previous code, 100,000 events


def _request(rng: random.Random) -> dict[str, Any]:
    return {"contextFeatures": [{"time": rng.choice(TIMES)}, {"device": rng.choice(DEVICES)}],
            "actions": SEED_ACTIONS, "slots": SEED_SLOTS}


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _child(home: str) -> None:
    """Open an engine on ``home`` in this fresh process; print RSS before/after and the peak as JSON."""
    before = _rss()
    t0 = time.perf_counter()
    engine = LocalPersonalizer(home)
    seconds = time.perf_counter() - t0
    after = _rss()
    pending = engine.stats()["pending"]
    engine.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"before": before, "after": after, "peak": peak, "pending": pending, "seconds": seconds}))


def _open_in_child(home: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", str(home)], capture_output=True, text=True,
                         check=True, timeout=900)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return
    n = args.events
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="personalizer-memory-") as tmp:
        home = Path(tmp) / "pending"
        engine = LocalPersonalizer(home)
        for _ in range(2_000):  # warm up VW, the catalog cache and SQLite's page cache
            answer = engine.rank(_request(rng))
            engine.reward(answer["eventId"], {"reward": [{"slotId": "BigHeroPosition", "value": 1.0},
                                                         {"slotId": "SmallSidebar", "value": 0.0}]})
        live_before = _rss()
        t0 = time.perf_counter()
        for _ in range(n):
            engine.rank(_request(rng))
        rank_seconds = time.perf_counter() - t0
        live_after = _rss()
        assert engine.stats()["pending"] == n, engine.stats()
        engine.close()

        empty = Path(tmp) / "no-pending"
        shutil.copytree(home, empty)
        with closing(sqlite3.connect(empty / "personalizer.sqlite3")) as db:
            db.execute("DELETE FROM events WHERE status = 'pending'")
            db.commit()
            db.execute("VACUUM")
        without = _open_in_child(empty)
        with_pending = _open_in_child(home)
        assert with_pending["pending"] == n and without["pending"] == 0

    mb = 1e6
    live_growth = live_after - live_before
    reload_growth = with_pending["after"] - without["after"]
    print(f"Memory per pending event: {n:,} unrewarded seed-catalog ranks (psutil RSS; MB = 10^6 bytes)\n")
    print("| measurement | RSS without the events | RSS with them | growth | bytes / pending event | target |")
    print("|---|---:|---:|---:|---:|---|")
    print(f"| live, after {n:,} ranks ({n / rank_seconds:,.0f} ranks/s) | {live_before / mb:,.0f} MB "
          f"| {live_after / mb:,.0f} MB | {live_growth / mb:,.1f} MB | {live_growth / n:,.0f} "
          f"| <= 1,024 {'met' if live_growth / n <= 1024 else 'NOT met'} |")
    print(f"| after a restart (reload {with_pending['seconds']:.1f} s, peak {with_pending['peak'] / mb:,.0f} MB) "
          f"| {without['after'] / mb:,.0f} MB | {with_pending['after'] / mb:,.0f} MB | {reload_growth / mb:,.1f} MB "
          f"| {reload_growth / n:,.0f} | <= 1,024 {'met' if reload_growth / n <= 1024 else 'NOT met'} |")
    print(f"| previous code, live (issue 8's measurement, 100,000 events) | | | {OLD_LIVE_MB} MB "
          f"| {OLD_LIVE_MB * mb / 100_000:,.0f} | |")
    print(f"| previous code, after a restart (issue 8: {OLD_RELOAD_MB} MB RSS) | | {OLD_RELOAD_MB} MB | | "
          f"≈ {(OLD_RELOAD_MB - without['after'] / mb) * mb / 100_000:,.0f} (vs. this run's no-pending RSS) | |")
    print(f"\nThe live figure includes the ready-made examples of the last {_RECENT_EXAMPLES:,} ranks "
          "(a fixed bound, not per event); older events rebuild theirs from the log when they close.")


if __name__ == "__main__":
    main()
