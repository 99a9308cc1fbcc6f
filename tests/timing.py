"""Test clocks: time that moves only when a test says so."""

from __future__ import annotations

from typing import Any

T0 = 1_800_000_000.0


class FakeClock:
    """A clock tests move by hand, so reward wait times pass instantly."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Ticking:
    """A backend wrapper that moves the engine's clock before every rank, so events spread over time."""

    def __init__(self, engine: Any, clock: FakeClock, step: float = 60.0) -> None:
        self.engine, self.clock, self.step = engine, clock, step

    def rank(self, request: dict) -> dict:
        self.clock.advance(self.step)
        return self.engine.rank(request)

    def reward(self, event_id: str, reward: dict) -> Any:
        return self.engine.reward(event_id, reward)

    def activate(self, event_id: str) -> Any:
        return self.engine.activate(event_id)
