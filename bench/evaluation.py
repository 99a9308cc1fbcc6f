"""Offline evaluation throughput beside bare Vowpal Wabbit on the same examples.

    python bench/evaluation.py [--events 100000] [--exact]

Logs ``--events`` seed-catalog events (an oracle exploring 20 %, like a learner's
log; generating them is not timed), then, for three candidate policies, times in
one run over the same pre-built example lines:

- bare VW ``predict`` + ``learn`` (what progressive validation costs done by hand);
- bare VW ``learn`` only;
- ``evaluation.replay`` (reads each slot's distribution and learns: the evaluation's
  per-policy cost), and the whole ``evaluation.evaluate`` with the built-in policies.

Encoding the log into lines happens once (``prepare``) and is shared by every
policy; it is reported on its own. Target: replay <= 2x bare predict + learn.
Machines here are noisy: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from personalizer import evaluation
from personalizer.simulation import OracleBackend, load_scenario, simulate
from personalizer.vw import encoding as features
from personalizer.vw import workspace

POLICIES = {
    "Retired service default": evaluation.PRESET_POLICIES["Retired service default"],
    "Project default": evaluation.PRESET_POLICIES["Project default"],
    "Less exploration": evaluation.PRESET_POLICIES["Less exploration"],
}


@dataclass
class Event:
    """A logged event shaped like ``store.StoredEvent`` (what evaluation reads)."""

    event_id: str
    created: float
    request: dict[str, Any]
    request_hash: str
    response: dict[str, Any]
    mode: str
    status: str
    labels: list[float | None]


def logged_events(n: int, seed: int = 7) -> list[Event]:
    """``n`` rewarded seed-catalog events from an oracle that explores 20 % of the time."""
    scenario = load_scenario("seed")
    records = simulate(OracleBackend(scenario, epsilon=0.2, seed=seed), scenario, n, seed=seed)
    requests = {}
    for ctx in scenario.contexts:
        req = scenario.rank_request(ctx)
        text = json.dumps(req, sort_keys=True)
        requests["|".join(ctx.values())] = (json.loads(text), hashlib.sha256(text.encode()).hexdigest())
    by_event: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_event.setdefault(r["eventId"], []).append(r)
    out = []
    start = 1_800_000_000.0
    for i, (event_id, rows) in enumerate(by_event.items()):
        request, digest = requests[rows[0]["contextKey"]]
        response = {"eventId": event_id, "slots": [
            {"id": r["slotId"], "rewardActionId": r["actionId"], "probability": r["probability"]} for r in rows]}
        out.append(Event(event_id, start + i * 0.864, request, digest, response, "Online", "learned",
                         [float(r["accepted"]) for r in rows]))
    return out


class Bare:
    """A bare VW pass over pre-built example text, as lean as the engine's own calls."""

    def __init__(self, data: evaluation.LoggedData, arguments: str, predict: bool) -> None:
        self.data, self.predict = data, predict
        self.unlabeled = ["\n".join(head + [features.slot_line(b, a) for b, a in zip(bodies, allowed, strict=True)])
                          for head, bodies, allowed in data.encoded] if predict else []
        self.vw = workspace.build(arguments)

    def run(self, lo: int, hi: int) -> None:
        """(predict +) learn events lo..hi-1."""
        vw, examples, unlabeled = self.vw, self.data.examples, self.unlabeled
        learn, predict = workspace.learn_scores, workspace.predict
        for i in range(lo, hi):
            if self.predict:
                predict(vw, [unlabeled[i]])
            learn(vw, examples[i])

    def close(self) -> None:
        workspace.finish(self.vw)


def measure(data: evaluation.LoggedData, arguments: str, exact: bool, block: int = 1000) -> tuple[list[float], Any]:
    """Seconds for bare predict+learn, bare learn and the evaluation's replay over the same events.

    The three run side by side, a block of events at a time in rotating order, so a noisy
    neighbour slows them alike and the ratios hold.
    """
    runners = [Bare(data, arguments, predict=True), Bare(data, arguments, predict=False),
               evaluation.Replayer(data, arguments, exact=exact or None)]
    seconds = [0.0, 0.0, 0.0]
    for b, lo in enumerate(range(0, data.events, block)):
        hi = min(lo + block, data.events)
        for j in range(3):
            k = (b + j) % 3
            t0 = time.perf_counter()
            runners[k].run(lo, hi)
            seconds[k] += time.perf_counter() - t0
    for r in runners:
        r.close()
    return seconds, runners[2].pi


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--exact", action="store_true", help="replay with separate pinned predicts (slower path)")
    args = parser.parse_args()
    n = args.events

    t0 = time.perf_counter()
    events = logged_events(n)
    gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = evaluation.prepare(events)
    prep = time.perf_counter() - t0
    print(f"# Offline evaluation, {data.events:,} seed-catalog events (2 slots, 4 actions)\n")
    print(f"generated in {gen:.1f} s (not timed below); encoded once in {prep:.1f} s "
          f"({data.events / prep:,.0f} events/s, shared by every policy)\n")

    print("| policy | bare predict+learn ev/s | bare learn ev/s | evaluation replay ev/s | "
          "replay time / bare predict+learn | replay time / bare learn | headline SNIPS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for name, arguments in POLICIES.items():
        (t_pl, t_l, t_r), pi = measure(data, arguments, args.exact)
        first = data.position == 0
        est = evaluation.estimate(pi[first] / data.probability[first], data.reward[first])
        ratio = t_r / t_pl
        worst = max(worst, ratio)
        print(f"| {name} | {n / t_pl:,.0f} | {n / t_l:,.0f} | {n / t_r:,.0f} | {ratio:.2f}x | {t_r / t_l:.2f}x "
              f"| {est.snips:.3f} |")

    t0 = time.perf_counter()
    result = evaluation.evaluate(data, [{"name": k, "arguments": v} for k, v in POLICIES.items()],
                                 exact=args.exact or None)
    t_all = time.perf_counter() - t0
    print(f"\nwhole `evaluate` (Online, Baseline, Random + 3 replays, statistics): {t_all:.1f} s "
          f"= {3 * n / t_all:,.0f} policy-events/s; optimal policy: {result.optimal_policy}")
    print(f"\nworst replay overhead: {worst:.2f}x bare predict+learn (target <= 2x): "
          f"{'met' if worst <= 2.0 else 'MISSED'}")
    return 0 if worst <= 2.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
