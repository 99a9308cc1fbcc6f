"""Replay of candidate policies over logged data with progressive validation (``Replayer``, ``replay``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..vw import encoding
from ..vw import workspace as vw_workspace
from ..vw.arguments import parse_arguments
from .logged import LoggedData, _distribution_pairs

# ================================================================ replay of candidate policies

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


def _needs_exact(tokens: Sequence[str]) -> bool:
    """Exploration algorithms whose learn-time scores are not the pre-update distribution."""
    return "--bag" in tokens or "--rnd" in tokens


class Replayer:
    """A candidate policy replaying the log in its own fresh workspace, a range of events at a time.

    ``run(lo, hi)`` must cover the events in order (0..n); ``pi`` fills as it goes.
    ``replay`` is the one-call form; benchmarks interleave ranges with other work.
    """

    def __init__(self, data: LoggedData, arguments: str, *, exact: bool | None = None,
                 keep_distributions: bool = False) -> None:
        tokens = parse_arguments(arguments)
        self.exact = _needs_exact(tokens) if exact is None else exact
        self.data = data
        self.vw = vw_workspace.build(tokens)
        self.pi = np.zeros(len(data.chosen))
        # With keep_distributions, per event: each slot's full distribution [(action, probability), ...]
        # (the DR direct term needs it); ``replay`` compacts them chunk by chunk.
        self.keep_distributions = keep_distributions
        self.distributions: list[Any] = [()] * data.events
        self._chosen = data.chosen.tolist()
        self._starts = data.row_start.tolist()

    def run(self, lo: int, hi: int) -> None:
        """Replay events ``lo..hi-1``: read each slot's distribution, then learn the event."""
        vw, pi, chosen, starts, data = self.vw, self.pi, self._chosen, self._starts, self.data
        learn, predict = vw_workspace.learn_scores, vw_workspace.predict
        if self.exact:
            slot_line = encoding.slot_line
            for i in range(lo, hi):
                head, bodies, allowed = data.encoded[i]
                r0 = starts[i]
                picks = chosen[r0: r0 + len(bodies)]
                dists = []
                for k in range(len(bodies)):
                    lines = list(head)
                    lines.extend(slot_line(bodies[j], [picks[j]]) for j in range(k))
                    lines.append(slot_line(bodies[k], allowed[k]))
                    dists.append(predict(vw, lines)[k])
                    pi[r0 + k] = _prob_of(dists[k], picks[k])
                if self.keep_distributions:
                    self.distributions[i] = dists
                learn(vw, data.examples[i])
            return
        examples = data.examples
        for i in range(lo, hi):
            scores = learn(vw, examples[i])  # CCB predicts each slot before it learns it: progressive validation
            if self.keep_distributions:
                self.distributions[i] = scores
            r0 = starts[i]
            for k, dist in enumerate(scores):
                c = chosen[r0 + k]
                for a, p in dist:
                    if a == c:
                        pi[r0 + k] = p
                        break

    def close(self, keep_model: bool = False) -> bytes | None:
        """Finish the workspace; returns the trained model with ``keep_model``."""
        try:
            return vw_workspace.save(self.vw) if keep_model else None
        finally:
            vw_workspace.finish(self.vw)


def replay(data: LoggedData, arguments: str, *, exact: bool | None = None, progress: ProgressFn | None = None,
           cancel: CancelFn | None = None, keep_model: bool = False,
           distributions: list[Any] | None = None) -> tuple[np.ndarray, bytes | None]:
    """Replay a candidate policy over the log in a fresh VW workspace (progressive validation).

    Returns ``pi`` (per row: the candidate's probability of the logged action, given the
    logged earlier slots, before learning that event) and, with ``keep_model``, the
    trained model. Raises PersonalizerError(InvalidPolicyConfiguration) for bad arguments,
    EvaluationCancelled when ``cancel()`` returns True (checked about every 1 % of events).
    ``distributions``, when given, receives the candidate's full distributions (for DR) as
    (row, action, probability) arrays, one tuple per chunk of events.
    """
    replayer = Replayer(data, arguments, exact=exact, keep_distributions=distributions is not None)
    total = data.events
    step = max(1, min(5000, total // 100))
    try:
        for lo in range(0, total, step):
            hi = min(lo + step, total)
            replayer.run(lo, hi)
            if distributions is not None:
                # Compact arrays per chunk: VW's Python lists would cost ~800 bytes an event.
                distributions.append(_distribution_pairs(data, replayer.distributions[lo:hi], lo))
                replayer.distributions[lo:hi] = [()] * (hi - lo)
            _tick(hi, total, progress, cancel)
    except BaseException:
        replayer.close()
        raise
    return replayer.pi, replayer.close(keep_model)


class EvaluationCancelled(Exception):
    """Raised by ``replay`` / ``evaluate`` when ``cancel()`` returned True."""


def _tick(done: int, total: int, progress: ProgressFn | None, cancel: CancelFn | None) -> None:
    if cancel is not None and cancel():
        raise EvaluationCancelled
    if progress is not None:
        progress(done, total)


def _prob_of(dist: Sequence[tuple[int, float]], action: int) -> float:
    for a, p in dist:
        if a == action:
            return float(p)
    return 0.0
