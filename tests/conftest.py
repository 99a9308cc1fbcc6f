"""Shared fixtures: a controllable clock and an engine on a temporary data directory.

Helpers for one area live in their own modules (server_fixtures.py, dashboard_fixtures.py)
so the suites do not fight over this file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # seed_data and friends

from pg_fixtures import pg_cluster, pg_url  # noqa: F401  (PostgreSQL fixtures, for every suite)
from timing import FakeClock

from personalizer.engine import LocalPersonalizer


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(tmp_path: Path, clock: FakeClock) -> Iterator[LocalPersonalizer]:
    eng = LocalPersonalizer(tmp_path / "data", clock=clock)
    yield eng
    eng.close()
