"""Feature importances and explanations: what they cost, beside what they are measured against.

    python bench/insight.py [--events 50000] [--ranks 3000]

1. Feature importance over ``--events`` logged seed-catalog events (an oracle exploring
   20 %, as ``bench/evaluation.py`` logs them; generating them is not timed), beside one
   evaluation replay of the same log with the same policy, in the same run. Target:
   <= 30 s. The importance replays the log once with every feature and once without
   each (9 features on the seed catalog: 10 replays), so about 10 replays is its floor.
2. Rank p50 with ``explain=True`` beside rank without, on an engine trained on the seed
   shop, taking turns every 100 ranks. Target: with explanation <= 2x without.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from personalizer import LocalPersonalizer, evaluation  # noqa: E402
from personalizer.engine import DEFAULT_POLICY_ARGUMENTS  # noqa: E402
from personalizer.importance import feature_importances, logged_features  # noqa: E402
from personalizer.simulation import load_scenario, simulate  # noqa: E402
from personalizer.vw.arguments import effective_arguments  # noqa: E402


def _evaluation_bench() -> object:
    """bench/evaluation.py as a module (its seed-catalog log generator)."""
    spec = importlib.util.spec_from_file_location("bench_evaluation", ROOT / "bench" / "evaluation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def importance_vs_replay(events: int) -> None:
    log = _evaluation_bench().logged_events(events)  # type: ignore[attr-defined]
    arguments = effective_arguments(DEFAULT_POLICY_ARGUMENTS, 0.2)
    t0 = time.perf_counter()
    data = evaluation.prepare(log)
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluation.replay(data, arguments)
    replay_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = feature_importances(data, arguments)
    importance_s = time.perf_counter() - t0
    n_features = len(logged_features(data))
    print(f"\n### Feature importance over {data.events:,} logged seed-catalog events (policy: project default)\n")
    print("| step | seconds | x one replay |")
    print("|---|---:|---:|")
    print(f"| encode the log once (`prepare`, shared) | {prepare_s:.2f} | – |")
    print(f"| one evaluation replay | {replay_s:.2f} | 1.0x |")
    print(f"| feature importance ({n_features} features: {n_features + 1} replays + masking) | {importance_s:.2f} | "
          f"{importance_s / replay_s:.1f}x |")
    verdict = "met" if importance_s + prepare_s <= 30 else "NOT met"
    print(f"\nTarget <= 30 s (encoding included: {importance_s + prepare_s:.1f} s): {verdict}.\n")
    print("| feature | score | reward drop | interval |")
    print("|---|---:|---:|---|")
    for s in result.scores:
        print(f"| {s.namespace}: {s.feature_name} | {s.score:.3f} | {s.drop:+.4f} | "
              f"[{s.interval[0]:+.4f}, {s.interval[1]:+.4f}] |")


def _p99_us(samples: list[float]) -> float:
    return sorted(samples)[int(0.99 * len(samples))] * 1e6


def explain_latency(ranks: int) -> None:
    scenario = load_scenario("seed")
    rng = random.Random(3)
    with tempfile.TemporaryDirectory(prefix="bench-insight-") as home:
        engine = LocalPersonalizer(home)
        try:
            simulate(engine, scenario, 2000, seed=1)
            contexts = scenario.contexts
            plain: list[float] = []
            explained: list[float] = []
            for block in range(0, ranks, 100):
                for explain, samples in ((False, plain), (True, explained)) if block % 200 == 0 else \
                        ((True, explained), (False, plain)):
                    for i in range(100):
                        ctx = rng.choice(contexts)
                        request = {"contextFeatures": scenario.context_features(ctx), "actions": scenario.actions,
                                   "slots": scenario.slots, "eventId": f"b-{explain}-{block}-{i}"}
                        t0 = time.perf_counter()
                        engine.rank(request, explain=explain)
                        samples.append(time.perf_counter() - t0)
        finally:
            engine.close()
    p50_plain, p50_explained = statistics.median(plain) * 1e6, statistics.median(explained) * 1e6
    print(f"\n### Rank with explanation vs without ({len(plain):,} ranks each, seed catalog, taking turns)\n")
    print("| rank | p50 µs | p99 µs |")
    print("|---|---:|---:|")
    print(f"| plain | {p50_plain:.0f} | {_p99_us(plain):.0f} |")
    print(f"| `explain=True` | {p50_explained:.0f} | {_p99_us(explained):.0f} |")
    ratio = p50_explained / p50_plain
    print(f"\np50 with / without: {ratio:.2f}x (target <= 2x): {'met' if ratio <= 2 else 'NOT met'}.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--ranks", type=int, default=3000)
    args = parser.parse_args()
    explain_latency(args.ranks)
    importance_vs_replay(args.events)
    return 0


if __name__ == "__main__":
    sys.exit(main())
