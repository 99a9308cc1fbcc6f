"""The oracle's page: for one context, the feasible assignment of actions to slots with the most expected reward.

Feasible means each slot gets an action it allows and no action fills two slots.
Small catalogs are solved by trying every assignment; larger ones as a maximum
weight matching (Hungarian algorithm), which is as exact and much faster.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

#: Assignments up to which the oracle tries them all; above, it solves a matching.
BRUTE_FORCE_LIMIT = 120


def best_page(probs: np.ndarray, allowed: Sequence[Sequence[int]]) -> list[int]:
    """Best assignment for one context's (slot, action) rewards: an action index per slot."""
    n_slots, n_actions = probs.shape
    if math.perm(n_actions, n_slots) <= BRUTE_FORCE_LIMIT:
        best: tuple[int, ...] = ()
        best_value = -math.inf
        for combo in itertools.permutations(range(n_actions), n_slots):
            if all(a in allowed[s] for s, a in enumerate(combo)):
                value = sum(probs[s, a] for s, a in enumerate(combo))
                if value > best_value + 1e-12:
                    best, best_value = combo, value
        return list(best)
    return max_assignment(probs, allowed)


def max_assignment(probs: np.ndarray, allowed: Sequence[Sequence[int]]) -> list[int]:
    """Hungarian algorithm (rows = slots <= columns = actions), maximizing summed probability."""
    n, m = probs.shape
    forbidden = 1e6
    cost = np.full((n, m), forbidden)
    for s, actions in enumerate(allowed):
        cost[s, list(actions)] = -probs[s, list(actions)]
    u = [0.0] * (n + 1)
    v = [0.0] * (m + 1)
    match = [0] * (m + 1)  # column -> row (1-based), 0 = free
    way = [0] * (m + 1)
    for i in range(1, n + 1):
        match[0] = i
        j0 = 0
        minv = [math.inf] * (m + 1)
        used = [False] * (m + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = match[j0], math.inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = cost[i0 - 1, j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(m + 1):
                if used[j]:
                    u[match[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    result = [0] * n
    for j in range(1, m + 1):
        if match[j]:
            result[match[j] - 1] = j - 1
    return result
