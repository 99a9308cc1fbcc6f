"""Policy history: every change of the learning policy, who made it and why, for listing and rollback.

The engine records a change in the same transaction that installs the new policy
(``LocalPersonalizer.update_policy``), so the history and the live policy never
disagree, and it survives restarts (the ``policy_changes`` table of the event log).
A change carries the policy before and after (name, VW arguments as they ran, and the
exploration percentage), who made it (``auto`` for automatic optimization, ``person``
for the dashboard, ``api`` for the REST API and direct calls), what kind of change it
was, the evaluation it came from and, for a change from an evaluation, the estimated
lift with its interval. Rolling a change back installs its ``before`` policy through
the same parse-and-trial path as any policy change, and is itself recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

from .protocol import iso_utc
from .store import PolicyChange
from .vw.arguments import parse_arguments

__all__ = ["ACTIONS", "WHO", "ChangeNote", "change_to_dict", "estimate_details", "same_arguments"]

#: Who may have made a change: automatic optimization, a person on the dashboard, an API caller.
WHO = ("auto", "person", "api")
#: Kinds of change: a new policy, back to the default, applied from an evaluation, applied by
#: automatic optimization, a rollback of an earlier change.
ACTIONS = ("update", "reset", "evaluation", "auto", "rollback")

# Short spellings VW accepts for options that also have a long one (arguments.py keeps the spelling).
_LONG_NAMES = {"-l": "--learning_rate", "-q": "--quadratic", "-b": "--bit_precision"}


@dataclass(frozen=True)
class ChangeNote:
    """What the engine records about a policy change besides the policies themselves."""

    who: str = "api"
    action: str = "update"
    evaluation_id: str | None = None
    details: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.who not in WHO:
            raise ValueError(f"who must be one of {WHO}, not {self.who!r}")
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, not {self.action!r}")


def _options(arguments: str) -> tuple[tuple[str, str], ...]:
    """Parsed arguments as sorted (option, value) pairs: spelling and order do not matter."""
    tokens = parse_arguments(arguments)
    pairs: list[tuple[str, str]] = []
    for token in tokens:
        is_option = token.startswith("-") and not _is_number(token)
        if is_option:
            pairs.append((_LONG_NAMES.get(token, token), ""))
        elif pairs:
            name, _ = pairs[-1]
            pairs[-1] = (name, repr(float(token)) if _is_number(token) else token)
    return tuple(sorted(pairs))


def _is_number(token: str) -> bool:
    try:
        return math.isfinite(float(token))
    except ValueError:
        return False


def same_arguments(first: str, second: str) -> bool:
    """True when two VW argument strings set the same options to the same values (any order or spelling)."""
    return _options(first) == _options(second)

#: Policy changes carry times to the millisecond.
_iso = partial(iso_utc, timespec="milliseconds")


def change_to_dict(change: PolicyChange) -> dict[str, Any]:
    """A recorded change in the API's shape (camelCase)."""
    details = change.details or {}
    return {
        "id": str(change.id), "time": _iso(change.created), "who": change.who, "action": change.action,
        "evaluationId": change.evaluation_id, "before": change.before, "after": change.after,
        "estimate": details.get("estimate"), "rollbackOf": details.get("rollbackOf"),
    }


def _number(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def estimate_details(result: Any, policy_name: str) -> dict[str, Any] | None:
    """The estimated lift of ``policy_name`` over the online policy in an evaluation result, or None.

    First slot (the unbiased headline): the policy's SNIPS estimate with its Cressie-Read
    interval, the online policy's realized average reward, the lift (their difference) and
    the lift's interval, which is the policy's interval shifted by the online value (the
    online value is what was observed on these very events; automatic optimization compares
    the policy's lower bound against it).
    """
    try:
        policy = result.policy(policy_name).headline
        online = result.policy("Online").headline
    except KeyError:
        return None
    lo, hi = policy.interval
    base = online.snips
    return {
        "policy": policy_name, "events": int(result.events), "slotId": result.slot_ids[0] if result.slot_ids else None,
        "intervalKind": policy.interval_kind, "confidence": result.confidence,
        "value": _number(policy.snips), "interval": [_number(lo), _number(hi)],
        "online": _number(base), "onlineInterval": [_number(v) for v in online.interval],
        "lift": _number(policy.snips - base), "liftInterval": [_number(lo - base), _number(hi - base)],
    }
