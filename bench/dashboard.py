"""Dashboard speed beside the engine-only time of the same work, measured in one run.

    python bench/dashboard.py [--visitors 10000] [--sim-visitors 3000] [--clicks 30]

Three measurements, each with its engine-only twin:
- the rerun after an Accept click (AppTest wall time of the whole script run:
  sidebar, rank page, cards) vs. the engine's ``activate`` + ``reward`` for that slot;
- the Reward trends page with a long history (``--visitors`` simulated visitors,
  two history rows each) vs. the same pandas + altair work without Streamlit;
- the simulator through the page (progress bar every 100 visitors, rows into the
  history) vs. ``simulation.simulate`` on the bare engine.
AppTest adds its own overhead (a script thread, parsing the output), so its times
are an upper bound of what a server spends. Machines here are noisy: read ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamlit.testing.v1 import AppTest

from personalizer.dashboard import charts, log_trends, trends
from personalizer.dashboard.backend import embedded_engine, log_rows_for, resolve_home
from personalizer.dashboard.history import History
from personalizer.dashboard.lift import from_history
from personalizer.dashboard.scenarios import builtin
from personalizer.dashboard.simulator import run_simulation
from personalizer.engine import LocalPersonalizer
from personalizer.simulation import simulate

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
TARGETS = {"accept": 0.150, "trends": 1.0, "simulator": 1000.0}


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_accept(clicks: int) -> tuple[float, float]:
    """Median seconds: the rerun after Accept; the engine's activate + reward for one slot."""
    at = AppTest.from_file(APP, default_timeout=120).run()
    engine = embedded_engine(resolve_home())
    reruns = []
    for _ in range(clicks):
        at.button(key="next-visitor").click().run()
        reruns.append(_timed(lambda: at.button(key="accept-BigHeroPosition").click().run()))
        assert not at.exception and at.button(key="accept-BigHeroPosition").disabled
    scenario = builtin("seed")
    direct = []
    for _ in range(clicks):
        event = engine.rank(scenario.rank_request({"time": "morning", "device": "mobile"}, defer=True))
        reward = {"reward": [{"slotId": "BigHeroPosition", "value": 1.0}]}
        direct.append(_timed(lambda e=event, r=reward: (engine.activate(e["eventId"]),
                                                         engine.reward(e["eventId"], r))))
    return statistics.median(reruns), statistics.median(direct)


def bench_trends(visitors: int) -> tuple[float, float, float, int]:
    """Seconds: first trends run with a fresh history frame, a rerun, the same work without Streamlit."""
    history = History()
    at = AppTest.from_file(APP, default_timeout=120).run()
    experiment = at.session_state["studio.experiments"].current  # the rows belong to the tab's experiment
    tags = {"experiment": experiment.number, "backend": experiment.backend, "policy": experiment.policy}
    with LocalPersonalizer(Path(tempfile.mkdtemp()) / "fill") as engine:
        run_simulation(engine, builtin("seed"), visitors, history, seed=7, epsilon=0.2, tags=tags)
    at.session_state["studio.history"] = history
    first = _timed(lambda: at.switch_page("pages/reward_trends.py").run())
    assert not at.exception and at.metric and at.metric[0].value == f"{visitors:,}"
    rerun = statistics.median(_timed(lambda: at.run()) for _ in range(5))

    def logic() -> None:
        history.version += 1  # force the frame to be rebuilt, as on the first run
        df = trends.in_experiments(history.frame(), [experiment.number])
        from_history(df)  # the headline card's lift
        summary = trends.summarize(df)
        order = [s.slot for s in summary.slots]
        specs = [charts.accept_rate_bars(trends.slot_rates(df), order),
                 charts.action_mix_chart(trends.top_actions(trends.action_mix(df)))]
        curves = trends.learning_curves(df, 50)
        marks = trends.markers(df, {})
        specs += [charts.learning_curve(curves[curves["slot"] == s], 50, marks[marks["slot"] == s]) for s in order]
        for chart in specs:
            chart.to_dict()

    direct = statistics.median(_timed(logic) for _ in range(5))
    return first, rerun, direct, len(history)


def bench_log_trends(events: int) -> dict[str, float]:
    """Seconds: the log view of Reward trends over ``events`` logged events (two slots each).

    The log is filled by ``simulate`` on the shared engine of a data directory of its own.
    Measured: the first tab of the server process (reads and parses the whole log once),
    a fresh tab after it (a reload: the log's rows and aggregates are shared), a rerun, the
    first run after one more event (an incremental read, aggregates recomputed), and the
    same pandas + altair work without Streamlit.
    """
    home = os.environ["PERSONALIZER_HOME"]
    os.environ["PERSONALIZER_HOME"] = str(Path(tempfile.mkdtemp()) / "log-home")
    try:
        engine = embedded_engine(resolve_home())
        scenario = builtin("seed")
        simulate(engine, scenario, events, seed=11)

        def fresh_tab() -> AppTest:
            at = AppTest.from_file(APP, default_timeout=300)
            at.switch_page("pages/reward_trends.py")
            return at

        def shown(at: AppTest) -> None:
            assert not at.exception, at.exception
            assert at.segmented_control(key="trend-view").value == "All events in the log"
            assert at.metric[0].value == f"{events:,}", at.metric[0].value

        at = fresh_tab()
        first = _timed(at.run)
        shown(at)
        reloads = []
        for _ in range(3):
            tab = fresh_tab()
            reloads.append(_timed(tab.run))
            shown(tab)
        rerun = statistics.median(_timed(at.run) for _ in range(3))
        grown = []
        for i in range(3):
            event = engine.rank(scenario.rank_request({"time": "morning", "device": "mobile"}))
            engine.reward(event["eventId"], {"reward": [{"slotId": s, "value": float(i % 2)}
                                                        for s in scenario.slot_ids]})
            grown.append(_timed(at.run))
            assert not at.exception

        rows = log_rows_for(engine)

        def logic() -> None:
            df = log_trends.in_scope(rows.frame(), rows.catalog_number(
                (frozenset(scenario.action_ids), tuple(scenario.slot_ids))))
            from_history(df)
            summary = trends.summarize(df)
            order = [s.slot for s in summary.slots]
            specs = [charts.accept_rate_bars(trends.slot_rates(df), order),
                     charts.action_mix_chart(trends.top_actions(trends.action_mix(df)))]
            curves = trends.learning_curves(df, 500)
            specs += [charts.learning_curve(curves[curves["slot"] == s], 500) for s in order]
            for chart in specs:
                chart.to_dict()

        direct = statistics.median(_timed(logic) for _ in range(3))
        return {"first": first, "reload": statistics.median(reloads), "rerun": rerun,
                "grown": statistics.median(grown), "logic": direct}
    finally:
        os.environ["PERSONALIZER_HOME"] = home


def bench_simulator(visitors: int) -> tuple[float, float, float]:
    """Visitors per second: through the simulator page (AppTest wall), its own count, bare simulate()."""
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page("pages/simulator.py").run()
    at.number_input(key="sim-visitors").set_value(visitors)
    wall = _timed(lambda: at.button(key="sim-run").click().run())
    assert not at.exception
    result = at.session_state["studio.sim_result"]
    with LocalPersonalizer(Path(tempfile.mkdtemp()) / "bare") as engine:
        bare = _timed(lambda: simulate(engine, builtin("seed"), visitors, seed=7))
    return visitors / wall, result.per_second, visitors / bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=10_000, help="simulated visitors in the trends history")
    parser.add_argument("--sim-visitors", type=int, default=3_000, help="visitors for the simulator run")
    parser.add_argument("--clicks", type=int, default=30, help="Accept clicks to time")
    parser.add_argument("--log-events", type=int, default=100_000, help="logged events for the log view")
    parser.add_argument("--only-log", action="store_true", help="only the log view's rows")
    args = parser.parse_args()
    os.environ["PERSONALIZER_HOME"] = str(Path(tempfile.mkdtemp()) / "home")

    log_times = bench_log_trends(args.log_events)
    if not args.only_log:
        accept, accept_engine = bench_accept(args.clicks)
        first, rerun, logic, rows = bench_trends(args.visitors)
        page_rate, run_rate, bare_rate = bench_simulator(args.sim_visitors)
    embedded_engine.clear()

    def ok(good: bool) -> str:
        return "yes" if good else "**no**"

    print(f"Dashboard benchmark (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)\n")
    print("| measurement | dashboard | same work, engine / logic only | target | met |")
    print("|---|---|---|---|---|")
    n = f"{args.log_events:,}"
    print(f"| Reward trends, log view, {n} logged events: first tab of the server (reads the log) "
          f"| {log_times['first'] * 1000:.0f} ms | {log_times['logic'] * 1000:.0f} ms (pandas + altair on the "
          "log's rows, no Streamlit) | once per server process | — |")
    print(f"| Reward trends, log view, {n} events: a fresh tab / reload (median of 3) "
          f"| {log_times['reload'] * 1000:.0f} ms | — | <= 1 s | {ok(log_times['reload'] <= TARGETS['trends'])} |")
    print(f"| Reward trends, log view, {n} events: rerun | {log_times['rerun'] * 1000:.0f} ms | — | <= 1 s "
          f"| {ok(log_times['rerun'] <= TARGETS['trends'])} |")
    print(f"| Reward trends, log view, {n} events + 1 new event (incremental read, aggregates redone) "
          f"| {log_times['grown'] * 1000:.0f} ms | — | <= 1 s | {ok(log_times['grown'] <= TARGETS['trends'])} |")
    if args.only_log:
        return
    print(f"| rerun after an Accept click (median of {args.clicks}) | {accept * 1000:.0f} ms "
          f"| {accept_engine * 1000:.2f} ms (activate + reward) | <= 150 ms | {ok(accept <= TARGETS['accept'])} |")
    print(f"| Reward trends, {args.visitors:,} visitors ({rows:,} history rows), first run | {first * 1000:.0f} ms "
          f"| {logic * 1000:.0f} ms (pandas + altair, no Streamlit) | <= 1 s | {ok(first <= TARGETS['trends'])} |")
    print(f"| Reward trends, same history, rerun | {rerun * 1000:.0f} ms | — | <= 1 s "
          f"| {ok(rerun <= TARGETS['trends'])} |")
    print(f"| simulator, {args.sim_visitors:,} visitors with progress bar | {page_rate:,.0f} visitors/s "
          f"(run's own clock {run_rate:,.0f}/s) | {bare_rate:,.0f} visitors/s (bare simulate) | >= 1,000/s "
          f"| {ok(page_rate >= TARGETS['simulator'])} |")


if __name__ == "__main__":
    main()
