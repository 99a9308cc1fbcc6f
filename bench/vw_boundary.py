"""VW boundary costs: time to accept a policy or a model (trial included) and RSS under unique 1 MB features.

    python bench/vw_boundary.py [--baseline DIR] [--ranks 600]

- **Policy accept**: ``update_policy`` on a fresh engine with seed-catalog traffic, the
  child-process trial included, against the same engine building the workspace alone
  (the in-process cost every policy change had before trials). Target: <= 2 s.
- **Model import**: ``import_model`` of an exported model, trial included.
- **RSS after N ranks with a unique 1 MB string feature each** (each rewarded, so no
  event stays pending), in a fresh interpreter per run. With ``--baseline DIR`` (a
  checkout of the code before the byte-bounded feature cache) the same run is made on
  that code too, in the same session. Target: growth <= 100 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

POLICY = "--ccb_explore_adf --epsilon 0.2 --cb_type mtr -q @_ -l 0.5"
_RSS_CHILD = r"""
import json, os, sys, tempfile, psutil
from personalizer.engine import LocalPersonalizer
n = int(sys.argv[1])
proc = psutil.Process()
actions = [{"id": f"a{i}", "features": [{"price": i}]} for i in range(4)]
slots = [{"id": "s", "features": [], "excludedActions": [], "baselineAction": "a0"}]
with tempfile.TemporaryDirectory() as home:
    engine = LocalPersonalizer(home)
    engine.rank({"contextFeatures": [{"t": "x"}], "actions": actions, "slots": slots})
    before = proc.memory_info().rss
    blob = "x" * 1_000_000
    for i in range(n):
        answer = engine.rank({"contextFeatures": [{"note": f"{i:06d}{blob}"}], "actions": actions, "slots": slots})
        engine.reward(answer["eventId"], {"reward": [{"slotId": "s", "value": 1.0}]})
    after = proc.memory_info().rss
    engine.close()
print(json.dumps({"before": before, "after": after}))
"""


def _median_seconds(call: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def accept_times(repeat: int) -> dict[str, float]:
    """Median seconds: update_policy (trial included), the in-process build alone, import_model, trial alone."""
    from personalizer.engine import LocalPersonalizer
    from personalizer.vw import trial, workspace
    from personalizer.vw.arguments import effective_arguments

    with tempfile.TemporaryDirectory() as home:
        engine = LocalPersonalizer(home)
        for i in range(20):  # live traffic for the trial to copy
            answer = engine.rank(trial.seed_requests()[i % 4][0])
            engine.reward(answer["eventId"], {"reward": [{"slotId": s["id"], "value": 1.0}
                                                         for s in answer["slots"]]})
        names = iter(range(10**6))
        accept = _median_seconds(lambda: engine.update_policy({"name": f"p{next(names)}", "arguments": POLICY}),
                                 repeat)
        args = effective_arguments(POLICY, 0.2)
        build = _median_seconds(lambda: workspace.finish(workspace.build(args)), repeat)
        alone = _median_seconds(lambda: trial.trial_policy(args), repeat)
        model = engine.export_model()
        imported = _median_seconds(lambda: engine.import_model(model), repeat)
        engine.close()
    return {"accept": accept, "build": build, "trial": alone, "import": imported}


def rss(root: Path, ranks: int) -> dict[str, float]:
    """RSS before/after ``ranks`` unique 1 MB-feature ranks, in a fresh interpreter on the code at ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(ranks)], env=env, capture_output=True,
                          check=True, timeout=1800, cwd=root)
    out = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return {"before": out["before"] / 2**20, "after": out["after"] / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, default=None, help="a checkout of the code to compare RSS with")
    parser.add_argument("--ranks", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    t = accept_times(args.repeat)
    print(f"policy: {POLICY}\n")
    print(f"| step (seed catalog, median of {args.repeat}) | seconds |")
    print("|---|---|")
    print(f"| accept a new policy (update_policy, trial included) | {t['accept']:.2f} |")
    print(f"| of which the child-process trial alone | {t['trial']:.2f} |")
    print(f"| building the workspace in-process (no trial; the old cost) | {t['build']:.3f} |")
    print(f"| import a model (import_model, trial included) | {t['import']:.2f} |")

    runs = [("this code", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
    print(f"\nRSS (MB) around {args.ranks} ranks, each with a unique 1 MB string feature (rewarded at once):\n")
    print("| code | before | after | growth |")
    print("|---|---|---|---|")
    growth = {}
    for name, root in runs:
        r = rss(root, args.ranks)
        growth[name] = r["after"] - r["before"]
        print(f"| {name} | {r['before']:.0f} | {r['after']:.0f} | {growth[name]:+.0f} |")
    print("\nTargets:")
    print(f"- [{'x' if t['accept'] <= 2 else ' '}] policy accepted (trial included) in <= 2 s")
    print(f"- [{'x' if growth['this code'] <= 100 else ' '}] RSS growth <= 100 MB after {args.ranks} unique 1 MB ranks")


if __name__ == "__main__":
    main()
