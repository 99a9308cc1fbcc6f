"""Named settings of offline evaluation: limits, the built-in and preset policies, time windows."""

from __future__ import annotations

from functools import partial

from ..contract import DEFAULT_EXPLORATION, MIN_PROBABILITY
from ..contract import MAX_CUSTOM_POLICIES as MAX_CUSTOM_POLICIES  # the contract's limit, re-exported
from ..engine import (
    DEFAULT_LEARNER,
    DEFAULT_POLICY_ARGUMENTS,
    RETIRED_POLICY_ARGUMENTS,
    policy_arguments,
)
from ..protocol import iso_utc

#: Personalizer's guidance: switch Apprentice to Online once the model agrees with the baseline this often.
APPRENTICE_READY_MATCH_RATE = 0.6
#: Names of the policies every evaluation includes; custom policies may not take them.
BUILTIN_POLICIES = ("Online", "Baseline", "Random")
#: Exploration of the "More exploration" and "Less exploration" presets: 0.1 either side of the default.
MORE_EXPLORATION = round(min(1.0, DEFAULT_EXPLORATION + 0.1), 6)
LESS_EXPLORATION = round(max(0.0, DEFAULT_EXPLORATION - 0.1), 6)
#: Learning settings the Evaluate page offers as presets (evaluated exactly as written).
PRESET_POLICIES: dict[str, str] = {
    "Retired service default": RETIRED_POLICY_ARGUMENTS,
    "Project default": DEFAULT_POLICY_ARGUMENTS,
    "More exploration": policy_arguments(DEFAULT_LEARNER, MORE_EXPLORATION),
    "Less exploration": policy_arguments(DEFAULT_LEARNER, LESS_EXPLORATION),
    # Tastes that depend on two context features together (time x device) need context x context x
    # action terms; the default leaves them out because they cost ~5x on large requests.
    "Joint interactions": f"{DEFAULT_POLICY_ARGUMENTS} --cubic @@_",
}
#: Time windows (minutes) the 2022-09-01-preview API aggregates by.
INTERVALS_MINUTES = (5, 60, 360, 720, 1440)
_MAX_BUCKETS = 500
_MIN_PROBABILITY = MIN_PROBABILITY  # the engine's floor for logged probabilities (engine.labeled_example)
#: Evaluation results carry times to the millisecond (as the service sent them).
_iso = partial(iso_utc, timespec="milliseconds")
