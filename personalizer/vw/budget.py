"""A per-request compute budget: how many features a rank request expands to in Vowpal Wabbit.

VW's cost for a CCB prediction grows with the features it generates for every
(slot, action) pair, and interactions multiply namespace sizes: under the default
``--cubic @@_`` a context of 1,200 features crossed with 50 actions and 50 slots
is billions of features (17-40 s of VW holding the GIL, the whole process
frozen). VW cannot be interrupted once called, so the estimate runs before any
VW work and an over-budget request is refused (400 ``RequestTooExpensive``).

The estimate, per slot and each action it may still choose (earlier slots use one
action each): the linear features (context + action + slot + constant) plus, per
interaction term, the product of its namespaces' sizes (``:`` stands for all of
them); doubled, because the CCB reduction repeats every interaction with the
slot's position. It counts from the validated request, with the encoding rules of
``encoding.py`` (a string, number or boolean is one feature, a numeric array one
per item, null and ``_keys`` none; every action and slot also has its id). It is
an upper-bound style estimate for comparison with a limit chosen by measurement,
not VW's exact count.
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Iterable, Sequence
from typing import Any

from ..contract import PersonalizerError

#: Default limit (``--max-rank-features`` / ``PERSONALIZER_MAX_RANK_FEATURES``), chosen by measurement
#: (``bench/hardening.py``): VW spends ~1.5 ns per estimated feature on heavy requests here and holds
#: the GIL meanwhile, so the event loop (``/health``) waits for the whole call. ``bench/latency.py``'s
#: large request (50 actions x 10 slots, ~20 features each on context, actions and slots, default
#: policy) estimates 7.7 M and ranks in ~14 ms on a quiet machine; the limit admits it and keeps the
#: heaviest admitted rank near 15 ms (30-50 ms on this shared, loaded machine), under the 50 ms
#: /health target. 10 M put /health p99 at 47-128 ms here under load.
DEFAULT_MAX_RANK_FEATURES = 8_000_000
ERROR_CODE = "RequestTooExpensive"

_CONTEXT, _ACTION, _SLOT, _ALL = "@", "_", "~", ":"
_INTERACTION_OPTIONS = {"-q": 2, "--quadratic": 2, "--cubic": 3, "--interactions": 0}


@functools.lru_cache(maxsize=64)
def interaction_terms(policy_arguments: str) -> tuple[str, ...]:
    """The interaction terms (namespace characters) that policy arguments ask VW to generate."""
    try:
        tokens = shlex.split(policy_arguments)
    except ValueError:
        return ()
    terms: list[str] = []
    for i, tok in enumerate(tokens):
        name, eq, value = tok.partition("=")
        if name not in _INTERACTION_OPTIONS:
            continue
        if not eq:
            value = tokens[i + 1] if i + 1 < len(tokens) else ""
        terms.extend(t for t in value.split(",") if t)
    return tuple(terms)


@functools.lru_cache(maxsize=64)
def _exponents(terms: tuple[str, ...]) -> tuple[tuple[int, int, int, int], ...]:
    """Each term as (context, action, slot, all) namespace counts; terms naming another namespace
    generate nothing (no feature lives there) and are dropped."""
    out = []
    for term in terms:
        if any(ns not in (_CONTEXT, _ACTION, _SLOT, _ALL) for ns in term):
            continue
        out.append((term.count(_CONTEXT), term.count(_ACTION), term.count(_SLOT), term.count(_ALL)))
    return tuple(out)


def count_features(feature_objects: Iterable[dict[str, Any]] | None) -> int:
    """How many VW features a list of Personalizer feature objects encodes to (encoding.py's rules)."""
    n = 0
    for obj in feature_objects or ():
        for key, value in obj.items():
            if key[:1] == "_" or value is None:
                continue
            if isinstance(value, dict):
                n += count_features((value,))
            elif isinstance(value, list):
                n += len(value)
            else:
                n += 1
    return n


def estimate(context: int, actions: Sequence[int], slots: Sequence[tuple[int, int]], terms: Sequence[str]) -> int:
    """Estimated features VW generates: ``context`` features, each action's and each slot's
    (feature count, number of allowed actions) under the interaction ``terms``."""
    exponents = _exponents(tuple(terms))  # a tuple already on the hot path: no copy
    largest_first = sorted(actions, reverse=True)
    # prefix[b][k]: sum of action^b over the k largest actions (a slot may still choose those).
    powers = {1} | {b for _, b, _, w in exponents if not w}
    prefix = {b: [0] for b in powers}
    for size in largest_first:
        for b, sums in prefix.items():
            sums.append(sums[-1] + size ** b)
    total = 0
    for position, (slot, allowed) in enumerate(slots):
        # Each earlier slot took one action; which ones is unknown, so assume the largest remain.
        k = max(1, min(allowed, len(actions) - position))
        total += k * (context + slot + 1) + prefix[1][k]  # linear features
        for a, b, c, wild in exponents:
            if not wild:
                total += context ** a * slot ** c * (prefix[b][k] if b else k)
            else:  # ':' stands for every namespace: per action
                total += sum(context ** a * size ** b * slot ** c * (context + size + slot + 1) ** wild
                             for size in largest_first[:k])
    return 2 * total


def _sizes(request: Any) -> tuple[int, list[int], list[tuple[int, int]]]:
    """Feature counts of a validated request: context, each action (+ its id), each slot (+ its id, allowed)."""
    n_actions = len(request.actions)
    actions = [count_features(a.features) + 1 for a in request.actions]
    slots = [(count_features(s.features) + 1, n_actions - len(set(s.excluded_actions))) for s in request.slots]
    return count_features(request.context_features), actions, slots


def rank_features(request: Any, policy_arguments: str) -> int:
    """The estimate for a validated ``MultiSlotRankRequest`` under ``policy_arguments``."""
    context, actions, slots = _sizes(request)
    return estimate(context, actions, slots, interaction_terms(policy_arguments))


def check_rank(request: Any, policy_arguments: str, limit: int | None) -> None:
    """Refuse (400 ``RequestTooExpensive``) a rank request estimated over ``limit`` features; None: no limit."""
    if limit is None:
        return
    context, actions, slots = _sizes(request)
    terms = interaction_terms(policy_arguments)
    # A cheap upper bound first (every namespace at most the widest pair, every term at most the
    # longest): on the hot path nearly every request is far below the limit.
    widest = context + max(actions) + max(slot for slot, _ in slots) + 1
    order = max((len(t) for t in terms), default=1)
    if 2 * len(actions) * len(slots) * widest ** order * (1 + len(terms)) <= limit:
        return
    features = estimate(context, actions, slots, terms)
    if features > limit:
        raise PersonalizerError(
            ERROR_CODE,
            f"the request would expand to ~{features:,} features under the current policy's interactions, "
            f"over this server's limit of {limit:,}; send fewer context features, actions or slots", 400)
