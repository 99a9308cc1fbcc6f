"""Simulated visitors with hidden preferences, to watch a backend learn.

A :class:`Scenario` (:mod:`.scenario`) is a catalog, the contexts visitors come
from and the hidden truth: the probability that a visitor in a context accepts an
action shown in a slot; its JSON format is described there. :func:`simulate`
(:mod:`.run`) plays visitors against any backend that offers the rank, reward and
activate part of the Personalizer API: the embedded engine, a remote client or
the reference backends (:mod:`.reference`: :class:`RandomBackend`,
:class:`BaselineBackend`, :class:`OracleBackend`).

Modules, by job: ``scenario`` (the scenario and its queries, loading shipped
ones), ``checks`` (every problem of a user-written scenario), ``preferences``
(profiles compiled into reward tables), ``oracle`` (the best feasible page),
``run`` (the simulation loop and accept rates), ``reference`` (reference
backends). Import from this package: ``from personalizer.simulation import ...``.
"""

from .reference import BaselineBackend, OracleBackend, RandomBackend
from .run import Backend, FollowsProgress, Record, accept_rate, greedy_agreement, simulate, window_accept_rates
from .scenario import SCENARIO_DIR, Context, Scenario, list_scenarios, load_scenario

__all__ = [
    "SCENARIO_DIR",
    "Backend",
    "BaselineBackend",
    "Context",
    "FollowsProgress",
    "OracleBackend",
    "RandomBackend",
    "Record",
    "Scenario",
    "accept_rate",
    "greedy_agreement",
    "list_scenarios",
    "load_scenario",
    "simulate",
    "window_accept_rates",
]
