"""Offline evaluation: throughput beside bare Vowpal Wabbit, interval coverage and width, DR against SNIPS.

    python bench/evaluation.py [--part all|throughput|intervals|dr] [--events 100000] [--logs 200] [--dr-logs 100]

**throughput** logs ``--events`` seed-catalog events (an oracle exploring 20 %, like a
learner's log; generating them is not timed), then, for three candidate policies, times in
one run over the same pre-built example lines:

- bare VW ``predict`` + ``learn`` (what progressive validation costs done by hand);
- bare VW ``learn`` only;
- ``evaluation.replay`` (reads each slot's distribution and learns: the evaluation's
  per-policy cost), and the whole ``evaluation.evaluate`` with the built-in policies
  (Cressie-Read intervals and doubly robust terms included).

Encoding the log into lines happens once (``prepare``) and is shared by every
policy; it is reported on its own. Targets: replay <= 2x bare predict + learn, and the
whole evaluation >= 20,000 events/s per policy. Machines here are noisy: read the ratios.

**intervals** draws ``--logs`` first-slot logs per size (300 and 1,500 events) from the seed
scenarios' hidden accept probabilities, logged by an oracle that explores (epsilon-greedy),
with the baseline action common (the oracle shows it where it is best) or rare (the oracle
never prefers it: only exploration shows it). For the Baseline, Random and a fixed
deterministic policy (each context's second-best action) it reports 95 % coverage of the true
value and the mean width of: this project's Gaussian SNIPS and empirical-Bernstein intervals,
vw-estimators' Gaussian and Cressie-Read intervals (``estimators.bandits``, defaults), and
ours (the headline: Cressie-Read with the log's weight bound). The same for the lift over
the baseline (online minus baseline, paired), a later slot's cascade weights, and the time
our intervals and vw-estimators' take.

**dr** replays candidate policies over ``--dr-logs`` simulator logs (oracle logging, 1,500
events) and compares the mean squared error of SNIPS, IPS and DR against the candidate's
true value: the exact expected first-slot reward of the replayed policy's own distributions
on the logged visitors (the simulator's hidden accept probabilities), which is what the
replay estimates. Also the built-in Baseline and Random policies, and DR with the true
reward model (the best any reward model can do).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from personalizer import evaluation
from personalizer.simulation import OracleBackend, Scenario, load_scenario, simulate
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


def logged_events(n: int, seed: int = 7, scenario_name: str = "seed") -> list[Event]:
    """``n`` rewarded seed-catalog events from an oracle that explores 20 % of the time."""
    scenario = load_scenario(scenario_name)
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


# ================================================================ throughput

def throughput(n: int, exact: bool) -> bool:
    """The throughput table; True when both targets are met."""
    t0 = time.perf_counter()
    events = logged_events(n)
    gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = evaluation.prepare(events)
    prep = time.perf_counter() - t0
    print(f"## Throughput: {data.events:,} seed-catalog events (2 slots, 4 actions)\n")
    print(f"generated in {gen:.1f} s (not timed below); encoded once in {prep:.1f} s "
          f"({data.events / prep:,.0f} events/s, shared by every policy)\n")

    print("| policy | bare predict+learn ev/s | bare learn ev/s | evaluation replay ev/s | "
          "replay time / bare predict+learn | replay time / bare learn | headline SNIPS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    bare = 0.0
    for name, arguments in POLICIES.items():
        (t_pl, t_l, t_r), pi = measure(data, arguments, exact)
        bare += t_pl
        first = data.position == 0
        est = evaluation.estimate(pi[first] / data.probability[first], data.reward[first])
        ratio = t_r / t_pl
        worst = max(worst, ratio)
        print(f"| {name} | {n / t_pl:,.0f} | {n / t_l:,.0f} | {n / t_r:,.0f} | {ratio:.2f}x | {t_r / t_l:.2f}x "
              f"| {est.snips:.3f} |")

    t0 = time.perf_counter()
    evaluation.evaluate(data, [])
    t_builtin = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluation.evaluate(data, [{"name": k, "arguments": v} for k, v in POLICIES.items()],
                                 exact=exact or None)
    t_all = time.perf_counter() - t0
    rate = 3 * n / t_all
    print(f"\nwhole `evaluate` (Online, Baseline, Random + 3 replays, Cressie-Read + DR statistics): {t_all:.1f} s "
          f"= **{rate:,.0f} events/s per replayed policy** "
          f"(target >= 20,000: {'met' if rate >= 20_000 else 'MISSED'}); "
          f"bare VW predict+learn of the same 3 policies in this run: {3 * n / bare:,.0f} events/s "
          f"(evaluate time / bare time {t_all / bare:.2f}x); built-in policies and statistics alone: "
          f"{t_builtin:.1f} s; "
          f"optimal policy: {result.optimal_policy}")
    print(f"\nworst replay overhead: {worst:.2f}x bare predict+learn (target <= 2x): "
          f"{'met' if worst <= 2.0 else 'MISSED'}\n")
    return worst <= 2.0 and rate >= 20_000


# ================================================================ interval coverage

@dataclass
class World:
    """One slot's hidden accept probabilities per context, and an epsilon-greedy oracle logging it."""

    name: str
    accept: np.ndarray        # (contexts, actions)
    logging: np.ndarray       # (contexts, actions): the logging policy's probabilities
    baseline: int
    fixed: np.ndarray         # per context: the fixed deterministic policy's action (second best)

    def log(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(context, action, reward) of ``n`` logged events."""
        c = rng.integers(0, len(self.accept), n)
        a = (rng.random(n)[:, None] > np.cumsum(self.logging[c], axis=1)).sum(axis=1)
        a = np.minimum(a, self.accept.shape[1] - 1)
        r = (rng.random(n) < self.accept[c, a]).astype(float)
        return c, a, r

    def targets(self) -> dict[str, tuple[np.ndarray, float]]:
        """Per target policy: its (contexts, actions) probabilities and its true value."""
        contexts, actions = self.accept.shape
        pis = {"Baseline": np.eye(actions)[np.full(contexts, self.baseline)],
               "Random": np.full((contexts, actions), 1.0 / actions),
               "Fixed": np.eye(actions)[self.fixed]}
        return {k: (pi, float((pi * self.accept).sum(axis=1).mean())) for k, pi in pis.items()}

    @property
    def online_value(self) -> float:
        return float((self.logging * self.accept).sum(axis=1).mean())


def world(scenario: Scenario, rare: bool, epsilon: float, slot: int = 0) -> World:
    """The scenario's slot as a World: common baseline (the oracle shows it where it is best) or rare."""
    spec = scenario.slots[slot]
    actions = [a["id"] for a in scenario.actions if a["id"] not in spec["excludedActions"]]
    accept = np.array([[scenario.accept_probability(c, spec["id"], a) for a in actions] for c in scenario.contexts])
    b = actions.index(spec["baselineAction"])
    preference = accept.copy()
    if rare:
        preference[:, b] = -1.0  # only exploration shows the baseline
    logging = np.full(accept.shape, epsilon / len(actions))
    logging[np.arange(len(accept)), preference.argmax(axis=1)] += 1.0 - epsilon
    fixed = np.argsort(-accept, axis=1)[:, 1]
    label = f"{scenario.name}, {'rare' if rare else 'common'} baseline (eps {epsilon})"
    return World(label, accept, logging, b, fixed)


def worlds() -> list[World]:
    seed, joint = load_scenario("seed"), load_scenario("seed-joint")
    return [world(seed, False, 0.2), world(seed, True, 0.1), world(joint, False, 0.2), world(joint, True, 0.1)]


KINDS = ("SNIPS Gaussian (this project, before)", "empirical Bernstein (this project)", "vw-estimators Gaussian",
         "vw-estimators Cressie-Read", "ours: Cressie-Read, weight-bounded (headline)")


def _vw_intervals(p: np.ndarray, r: np.ndarray, pred: np.ndarray) -> tuple[list[float], list[float], float]:
    """vw-estimators' Gaussian and Cressie-Read 95 % intervals (defaults), and the seconds they took."""
    from estimators.bandits import cressieread, gaussian

    t0 = time.perf_counter()
    cr, gs = cressieread.Interval(), gaussian.Interval()
    for pl, rr, pp in zip(p.tolist(), r.tolist(), pred.tolist(), strict=True):
        cr.add_example(pl, rr, pp)
        gs.add_example(pl, rr, pp)
    out = gs.get(0.05), cr.get(0.05)
    return [v if v is not None else math.nan for v in out[0]], list(out[1]), time.perf_counter() - t0


def intervals(logs: int) -> bool:
    """Coverage and width tables; True when ours covers >= 93 % everywhere and is no wider than vw's CR."""
    rng = np.random.default_rng(2026)
    sizes = (300, 1500)
    # (size, kind) -> [hits, width, cells]; per (world, policy, size): ours and vw CR
    total: dict[tuple[int, str], list[float]] = {}
    cells: list[tuple[str, str, int, float, float, float, float]] = []
    lift_stats: dict[tuple[int, str], list[float]] = {}
    t_ours = t_vw = 0.0
    n_intervals = 0
    for w in worlds():
        targets = w.targets()
        lift_truth = w.online_value - targets["Baseline"][1]
        for n in sizes:
            per: dict[tuple[str, str], list[float]] = {}
            for _ in range(logs):
                c, a, r = w.log(n, rng)
                p = w.logging[c, a]
                bound = float((1.0 / p).max())
                for pol, (pi, truth) in targets.items():
                    pred = pi[c, a]
                    t0 = time.perf_counter()
                    est = evaluation.estimate(pred / p, r, max_weight=bound)
                    t_ours += time.perf_counter() - t0
                    vw_gauss, vw_cr, t = _vw_intervals(p, r, pred)
                    t_vw += t
                    n_intervals += 1
                    for kind, iv in zip(KINDS, (est.snips_interval, est.bernstein_interval, vw_gauss, vw_cr,
                                                est.interval), strict=True):
                        for key, table in (((n, kind), total), ((pol, kind), per)):
                            h = table.setdefault(key, [0.0, 0.0, 0.0])
                            h[0] += iv[0] <= truth <= iv[1]
                            h[1] += iv[1] - iv[0]
                            h[2] += 1
                wb = (a == w.baseline) / p  # the baseline's weights: lift_over_baseline's per-slot computation
                one = evaluation._lift("s", 0, "conditional", wb, r, bound, (0.0, 1.0), 0.95, 100, 20)
                for kind in ("gaussian", "ips-gaussian", "bernstein", "cressie-read"):
                    iv = one.interval_of(kind)
                    h = lift_stats.setdefault((n, kind), [0.0, 0.0, 0.0])
                    h[0] += iv[0] <= lift_truth <= iv[1]
                    h[1] += iv[1] - iv[0]
                    h[2] += 1
            for pol in targets:
                ours, ref = per[(pol, KINDS[4])], per[(pol, KINDS[3])]
                cells.append((w.name, pol, n, ours[0] / ours[2], ours[1] / ours[2], ref[0] / ref[2], ref[1] / ref[2]))

    print(f"## Interval coverage: {logs} logs per size and world, 4 worlds x 3 policies "
          f"(Baseline, Random, fixed deterministic), first slot, nominal 95 %\n")
    print("| 95 % interval | 300 events: coverage / mean width | 1,500 events: coverage / mean width |")
    print("|---|---|---|")
    for kind in KINDS:
        row = [total[(n, kind)] for n in sizes]
        print(f"| {kind} | " + " | ".join(f"{h[0] / h[2]:.3f} / {h[1] / h[2]:.3f}" for h in row) + " |")
    print("\nPer world and policy (ours vs vw-estimators Cressie-Read: coverage / mean width):\n")
    print("| world | policy | events | ours | vw-estimators Cressie-Read | width ratio |")
    print("|---|---|---:|---|---|---:|")
    ok = True
    for name, pol, n, cov, width, rcov, rwidth in cells:
        ok &= cov >= 0.93 and width <= rwidth + 1e-12
        print(f"| {name} | {pol} | {n:,} | {cov:.3f} / {width:.3f} | {rcov:.3f} / {rwidth:.3f} "
              f"| {width / rwidth:.2f} |")
    print(f"\nLowest coverage of ours: {min(c[3] for c in cells):.3f} (target >= 0.93); widest ratio to "
          f"vw-estimators Cressie-Read: {max(c[4] / c[6] for c in cells):.2f} (target <= 1): "
          f"{'met' if ok else 'MISSED'}")
    print(f"\nTime per interval: ours {t_ours / n_intervals * 1e3:.2f} ms (sufficient statistics, every "
          f"estimator), "
          f"vw-estimators {t_vw / n_intervals * 1e3:.2f} ms (per-event add, Gaussian + Cressie-Read) over "
          f"{sum(sizes) / 2:,.0f} events on average\n")

    print("## Lift over the baseline (online minus baseline, paired), same logs\n")
    print("| 95 % interval | 300 events: coverage / mean width | 1,500 events: coverage / mean width |")
    print("|---|---|---|")
    names = {"gaussian": "paired Gaussian (SNIPS difference, before)", "ips-gaussian": "IPS difference, Gaussian",
             "bernstein": "IPS difference, empirical Bernstein", "cressie-read": "ours: paired Cressie-Read (headline)"}
    for kind, label in names.items():
        row = [lift_stats[(n, kind)] for n in sizes]
        print(f"| {label} | " + " | ".join(f"{h[0] / h[2]:.3f} / {h[1] / h[2]:.3f}" for h in row) + " |")
    lift_cov = min(lift_stats[(n, "cressie-read")][0] / lift_stats[(n, "cressie-read")][2] for n in sizes)
    verdict = "met" if lift_cov >= 0.93 else "MISSED"
    print(f"\nlowest lift coverage (ours): {lift_cov:.3f} (target >= 0.93): {verdict}\n")
    return ok and lift_cov >= 0.93


# ================================================================ a later slot: cascade against pseudo-inverse

def two_slot_log(scenario: Scenario, n: int, epsilon: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A two-slot page logged like the engine: slot 1 epsilon-greedy, slot 2 epsilon-greedy over what is left.

    Returns per event: context, both actions, their conditional probabilities (what the engine logs),
    slot 2's marginal probability, and both rewards.
    """
    ids = [a["id"] for a in scenario.actions]
    accept = np.array([[[scenario.accept_probability(c, s["id"], a) for a in ids] for s in scenario.slots[:2]]
                       for c in scenario.contexts])                     # (context, slot, action)
    allowed = np.array([[a not in s["excludedActions"] for a in ids] for s in scenario.slots[:2]])
    contexts, actions = len(scenario.contexts), len(ids)

    def policy(c: np.ndarray, slot: int, taken: np.ndarray | None) -> np.ndarray:
        """(events, actions) logging probabilities of ``slot`` given the earlier slot's action."""
        mask = np.broadcast_to(allowed[slot], (len(c), actions)).copy()
        if taken is not None:
            mask[np.arange(len(c)), taken] = False
        pref = np.where(mask, accept[c, slot], -1.0)
        probs = mask * (epsilon / mask.sum(axis=1, keepdims=True))
        probs[np.arange(len(c)), pref.argmax(axis=1)] += 1.0 - epsilon
        return probs

    def draw(probs: np.ndarray) -> np.ndarray:
        return np.minimum((rng.random(len(probs))[:, None] > np.cumsum(probs, axis=1)).sum(axis=1), actions - 1)

    c = rng.integers(0, contexts, n)
    mu1 = policy(c, 0, None)
    a1 = draw(mu1)
    mu2 = policy(c, 1, a1)
    a2 = draw(mu2)
    # Slot 2's marginal over slot 1's draw, what a product-form (slate) estimator would need.
    marginal2 = np.zeros(n)
    for first in range(actions):
        marginal2 += mu1[:, first] * policy(c, 1, np.full(n, first))[np.arange(n), a2]
    rows = np.arange(n)
    return {"c": c, "a1": a1, "a2": a2, "p1": mu1[rows, a1], "p2": mu2[rows, a2], "m2": marginal2,
            "r1": (rng.random(n) < accept[c, 0, a1]).astype(float),
            "r2": (rng.random(n) < accept[c, 1, a2]).astype(float),
            "accept": accept}


def later_slots(logs: int) -> None:
    """The second slot of the Baseline page: conditional vs cascade (CCB) vs pseudo-inverse (slates)."""
    scenario = load_scenario("seed")
    ids = [a["id"] for a in scenario.actions]
    b1, b2 = (ids.index(s["baselineAction"]) for s in scenario.slots[:2])
    rng = np.random.default_rng(14)
    rows = []
    for n in (300, 1500):
        hits: dict[str, list[float]] = {}
        for _ in range(logs):
            log = two_slot_log(scenario, n, 0.2, rng)
            accept = log["accept"]
            truth2 = float(accept[:, 1, b2].mean())
            truth_page = float(accept[:, 0, b1].mean()) + truth2
            w1 = (log["a1"] == b1) / log["p1"]
            w2 = (log["a2"] == b2) / log["p2"]
            bound = float((1.0 / (log["p1"] * log["p2"])).max())
            cond = evaluation.estimate(w2, log["r2"], max_weight=float((1.0 / log["p2"]).max()))
            casc = evaluation.estimate(w1 * w2, log["r2"], max_weight=bound)
            casc_vw = evaluation.estimate(w1 * w2, log["r2"])  # = vw-estimators ccb.multislot (unbounded wmax)
            # Pseudo-inverse (vw-estimators slates, product form) for the page's total, fed the logged
            # (conditional) probabilities and, separately, slot 2's true marginals.
            total = log["r1"] + log["r2"]
            pi_cond = float(np.mean(total * (w1 + w2 - 1.0)))
            pi_marg = float(np.mean(total * (w1 + (log["a2"] == b2) / log["m2"] - 1.0)))
            casc_page = evaluation.estimate(w1, log["r1"]).snips + casc.snips
            for key, value, iv, truth in (
                ("slot 2, conditional weights", cond.snips, cond.interval, truth2),
                ("slot 2, cascade weights (ours)", casc.snips, casc.interval, truth2),
                ("slot 2, cascade, vw-estimators CR (ccb.multislot)", casc_vw.snips, casc_vw.interval, truth2),
                ("page total, cascade (ours)", casc_page, (math.nan, math.nan), truth_page),
                ("page total, pseudo-inverse, logged probabilities", pi_cond, (math.nan, math.nan), truth_page),
                ("page total, pseudo-inverse, true marginals", pi_marg, (math.nan, math.nan), truth_page),
            ):
                h = hits.setdefault(key, [0.0, 0.0, 0.0, 0.0])
                h[0] += value - truth
                h[1] += (value - truth) ** 2
                h[2] += iv[0] <= truth <= iv[1]
                h[3] += iv[1] - iv[0]
        rows.append((n, hits))
    print(f"## A later slot: the Baseline page's second slot, seed scenario, oracle logging (eps 0.2), {logs} logs\n")
    print("| estimate | events | bias | RMSE | Cressie-Read coverage / mean width |")
    print("|---|---:|---:|---:|---|")
    for n, hits in rows:
        for key, (bias, sq, cov, width) in hits.items():
            interval = f"{cov / logs:.3f} / {width / logs:.3f}" if "page" not in key else "-"
            print(f"| {key} | {n:,} | {bias / logs:+.4f} | {math.sqrt(sq / logs):.4f} | {interval} |")
    print()


# ================================================================ DR against SNIPS

DR_POLICIES = {**POLICIES, "Crippled learner (-l 1e-9)": "--ccb_explore_adf --epsilon 0.2 -l 1e-9"}


def first_slot_truth(scenario: Scenario, events: list[Event]) -> Any:
    """``truth_of(event index, action index)``: the hidden accept probability in the event's first slot."""
    cache: dict[tuple[str, int], float] = {}
    contexts = []
    for e in events:
        ctx: dict[str, str] = {}
        for item in e.request["contextFeatures"]:
            ctx.update(item)
        contexts.append(ctx)

    def truth_of(i: int, action: int) -> float:
        key = (events[i].request_hash, action)
        if key not in cache:
            request = events[i].request
            cache[key] = scenario.accept_probability(contexts[i], request["slots"][0]["id"],
                                                     request["actions"][action]["id"])
        return cache[key]

    return truth_of


def doubly_robust(logs: int, n: int = 1500) -> bool:
    """MSE of SNIPS, IPS and DR against each candidate's exact value; True when DR <= 0.7x SNIPS on average."""
    errors: dict[tuple[str, str], list[float]] = {}
    for seed in range(logs):
        scenario_name = ("seed", "seed-joint")[seed % 2]
        scenario = load_scenario(scenario_name)
        events = logged_events(n, seed=1000 + seed, scenario_name=scenario_name)
        data = evaluation.prepare(events)
        first = np.flatnonzero(data.position == 0)
        truth_of = first_slot_truth(scenario, events)

        model = evaluation._RewardModel(data)
        is_first = data.position == 0
        true_logged = np.array([truth_of(int(data.event_of_row[j]), int(data.chosen[j])) if is_first[j] else 0.0
                                for j in range(len(data.chosen))])
        candidates: dict[str, tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        for name, arguments in DR_POLICIES.items():
            chunks: list[Any] = []
            pi, _ = evaluation.replay(data, arguments, distributions=chunks)
            candidates[name] = (pi, evaluation._concatenate_pairs(chunks))
        candidates["Baseline (built-in)"] = (data.is_baseline.astype(float), evaluation._baseline_pairs(data))
        candidates["Random (built-in)"] = (1.0 / np.maximum(data.open_actions, 1), evaluation._open_actions(data))
        for name, (pi, (pr, pa, pp)) in candidates.items():
            w = pi / data.probability
            on_first = is_first[pr]
            true_direct = np.array([truth_of(int(data.event_of_row[j]), int(a)) if f else 0.0
                                    for j, a, f in zip(pr.tolist(), pa.tolist(), on_first.tolist(), strict=True)])
            direct_true = np.bincount(pr, weights=pp * true_direct, minlength=len(w))[first]
            truth = float(direct_true.mean())  # the policy's exact expected first-slot reward on these visitors
            dr = model.dr_terms(w, pr, pa, pp)[first]
            dr_true = direct_true + w[first] * (data.reward[first] - true_logged[first])
            wf, rf = w[first], data.reward[first]
            for label, value in (("SNIPS", float((wf * rf).sum() / wf.sum())), ("IPS", float((wf * rf).mean())),
                                 ("DR", float(dr.mean())), ("DR, true reward model", float(dr_true.mean()))):
                errors.setdefault((name, label), []).append(value - truth)
    print(f"## Doubly robust against SNIPS: {logs} simulator logs of {n:,} events (seed and seed-joint, "
          f"oracle logging, eps 0.2), first slot\n")
    print("| policy | SNIPS MSE | IPS MSE | DR MSE | DR / SNIPS | DR with the true reward model / SNIPS |")
    print("|---|---:|---:|---:|---:|---:|")
    ratios = []
    for name in [*DR_POLICIES, "Baseline (built-in)", "Random (built-in)"]:
        mse = {k: float(np.mean(np.square(errors[(name, k)]))) for k in ("SNIPS", "IPS", "DR", "DR, true reward model")}
        ratio = mse["DR"] / mse["SNIPS"]
        if name in DR_POLICIES:
            ratios.append(ratio)
        print(f"| {name} | {mse['SNIPS']:.2e} | {mse['IPS']:.2e} | {mse['DR']:.2e} | {ratio:.2f} | "
              f"{mse['DR, true reward model'] / mse['SNIPS']:.2f} |")
    mean_ratio = float(np.mean(ratios))
    print(f"\nmean DR / SNIPS MSE over the replayed candidates: {mean_ratio:.2f} (target <= 0.7): "
          f"{'met' if mean_ratio <= 0.7 else 'MISSED'}\n")
    return mean_ratio <= 0.7


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "throughput", "intervals", "dr"), default="all")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--exact", action="store_true", help="replay with separate pinned predicts (slower path)")
    parser.add_argument("--logs", type=int, default=200, help="logs per size and world for the coverage tables")
    parser.add_argument("--dr-logs", type=int, default=100)
    args = parser.parse_args()
    ok = True
    print("# Offline evaluation benchmark\n")
    if args.part in ("all", "throughput"):
        ok &= throughput(args.events, args.exact)
    if args.part in ("all", "intervals"):
        ok &= intervals(args.logs)
        later_slots(args.logs)
    if args.part in ("all", "dr"):
        ok &= doubly_robust(args.dr_logs)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
