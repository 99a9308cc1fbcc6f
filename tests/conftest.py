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

from personalizer.engine import LocalPersonalizer


class FakeClock:
    """A clock tests move by hand, so reward wait times pass instantly."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(tmp_path: Path, clock: FakeClock) -> Iterator[LocalPersonalizer]:
    eng = LocalPersonalizer(tmp_path / "data", clock=clock)
    yield eng
    eng.close()
