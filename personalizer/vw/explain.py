"""Why a slot got its action: each feature's share of the model's score, read from the workspace's own weights.

A CCB policy scores every allowed action of a slot with a linear model over the
features VW builds from the example: each feature alone and the products the
policy's interactions ask for (``--cubic @@_``: context x context x action), plus
what the CCB reduction adds (every term crossed with the slot's index). The score
of an action is the sum of ``weight x value`` over those terms, so it splits
exactly into terms. This module rebuilds the terms of one action the way VW does
(its hashing: FNV products of the features' hashes, its order of namespaces, its
wildcard and same-namespace rules), reads each term's weight through the pybind
layer (``get_weight``) and checks the sum against the score VW itself computed for
the same example (the action's ``partial_prediction``): an explanation is only
given when the two agree, so a policy whose terms this code does not know (a
reduction with several models such as ``--bag``) says "not available" instead of
giving a wrong one.

Attribution: the players are the request's own features (the context's, each
action's and the slot's, with the ids the encoder adds). A term's value goes in
equal parts to the distinct players in it (``time=evening x time=evening x
category=Electronics`` is a pair: half each), the exact Shapley value of a
product term when a missing feature contributes nothing. Terms without players
(the constant, the slot index alone) are the same for every action of the slot
and cancel in the difference between two actions.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pylibvw
from vowpalwabbit import Workspace

from .arguments import option_value, parse_arguments
from .encoding import ACTION_NAMESPACE, CONTEXT_NAMESPACE, SLOT_NAMESPACE

__all__ = ["Contribution", "Explainer", "Feature", "SlotScores", "explain_page", "parse_features",
           "predict_with_last_scores", "slot_scores"]

_FNV = 16777619
_MASK64 = (1 << 64) - 1
_CONSTANT_HASH = 11650396        # VW's constant feature (namespace 128)
_CCB_ID_NAMESPACE = "_id"        # VW hashes the slot index feature ``index<k>`` in this namespace
_ROLES = {CONTEXT_NAMESPACE: "context", ACTION_NAMESPACE: "action", SLOT_NAMESPACE: "slot"}
_PRINTABLE = (CONTEXT_NAMESPACE, ACTION_NAMESPACE, SLOT_NAMESPACE)  # sorted by code: VW's wildcard order
_INTERACTION_OPTIONS = ("--quadratic", "-q", "--cubic", "--interactions")
_PERCENT = re.compile(r"%([0-9A-F]{2})")
#: Feature sets whose terms are memoized per explainer (a few KB each).
_MAX_STRUCTURES = 2048
#: Largest |VW score - sum of terms| accepted as "the same" (float32 sums over a few hundred terms).
TOLERANCE = 1e-4


def _unescape(text: str) -> str:
    return _PERCENT.sub(lambda m: chr(int(m.group(1), 16)), text)


@dataclass(frozen=True)
class Feature:
    """One feature of a request as VW sees it: role, key path, value, and VW's token."""

    role: str                    # context | action | slot
    name: str                    # the key path (``user.geo.city``); ``_id`` for the ids the encoder adds
    value: str | float | None    # the string value, or the number
    token: str                   # the hashed name (escaped, as in the VW line)
    x: float                     # VW's value: 1 for strings and booleans, the number otherwise

    @property
    def key(self) -> tuple[str, str]:
        """(role, name): the feature regardless of its value."""
        return self.role, self.name

    def text(self) -> str:
        """Plain words: ``time=evening``, ``price=20``."""
        value = self.value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return f"{self.name}={value}"


_PARSED: dict[str, list[Feature]] = {}
_MAX_PARSED = 4096


def parse_features(namespace_text: str) -> list[Feature]:
    """The features of one encoded namespace (``|@ time=evening price:20``), in order (memoized; do not mutate)."""
    hit = _PARSED.get(namespace_text)
    if hit is not None:
        return hit
    out = _parse_features(namespace_text)
    if len(namespace_text) <= 4096:
        if len(_PARSED) >= _MAX_PARSED:
            _PARSED.clear()
        _PARSED[namespace_text] = out
    return out


def _parse_features(namespace_text: str) -> list[Feature]:
    body = namespace_text[namespace_text.index("|") + 1:]
    ns = body[:1]
    role = _ROLES.get(ns, ns)
    out: list[Feature] = []
    for token in body[1:].split():
        name, colon, number = token.partition(":")
        if colon:
            x = float(number)
            key = _unescape(re.sub(r"\[[0-9]+\]$", "", name))
            out.append(Feature(role, key, x, name, x))
        else:
            key, _, value = token.partition("=")
            out.append(Feature(role, _unescape(key), _unescape(value), token, 1.0))
    return out


def _namespace_part(line: str) -> str:
    at = line.find("|")
    return line[at:] if at >= 0 else "|"


@dataclass(frozen=True)
class Contribution:
    """A group of features crossed in the model, and what their terms add to the chosen action against another."""

    features: tuple[Feature, ...]   # distinct players, in the order VW crossed them (chosen action's values)
    value: float                    # reward units: > 0 pushes toward the chosen action

    def text(self) -> str:
        """``time=evening x category=Electronics: +0.31``."""
        return f"{' x '.join(f.text() for f in self.features)}: {self.value:+.2f}"


@dataclass(frozen=True)
class SlotScores:
    """VW's own scores (predicted cost) of the actions a slot could take, by action index."""

    slot: int
    scores: dict[int, float]


def predict_with_last_scores(vw: Workspace, lines: Sequence[str], allowed: Sequence[Sequence[int]]
                             ) -> tuple[list[list[tuple[int, float]]], SlotScores]:
    """``workspace.predict`` that also keeps VW's scores of the last slot's actions (its own pass).

    The decision scores are exactly those of ``workspace.predict`` (the same call); what an
    action example remembers after it is its score in the last slot it could fill.
    """
    examples = vw._parse("\n".join(lines))
    try:
        pylibvw.vw.predict_multi(vw, examples)
        decisions = examples[0].get_decision_scores()
        last = len(allowed) - 1
        taken = {slot[0][0] for slot in decisions[:last]}
        scores = {a: float(examples[1 + a].get_partial_prediction()) for a in allowed[last] if a not in taken}
        return decisions, SlotScores(last, scores)
    finally:
        pylibvw.vw._finish_example_multi_ex(vw, examples)


def slot_scores(vw: Workspace, head: Sequence[str], bodies: Sequence[str], allowed: Sequence[Sequence[int]],
                chosen: Sequence[int], last: SlotScores | None = None) -> list[SlotScores]:
    """Per slot, VW's score of every action it could take, the earlier slots pinned to ``chosen``.

    One prediction per slot: CCB scores a slot's actions in its own pass, and a later
    pass overwrites what an action example remembers. ``last``: the last slot's scores,
    already read from the rank's own prediction (``predict_with_last_scores``).
    """
    out: list[SlotScores] = []
    taken: set[int] = set()
    for k in range(len(bodies)):
        if last is not None and k == len(bodies) - 1:
            out.append(last)
            break
        lines = list(head)
        lines.extend(f"ccb slot  {chosen[j]} {bodies[j]}" for j in range(k))
        lines.append(f"ccb slot  {','.join(map(str, allowed[k]))} {bodies[k]}")
        examples = vw._parse("\n".join(lines))
        try:
            pylibvw.vw.predict_multi(vw, examples)
            open_actions = [a for a in allowed[k] if a not in taken]
            out.append(SlotScores(k, {a: float(examples[1 + a].get_partial_prediction()) for a in open_actions}))
        finally:
            pylibvw.vw._finish_example_multi_ex(vw, examples)
        taken.add(chosen[k])
    return out


class Explainer:
    """Rebuilds a workspace's terms for one action of a slot; one per workspace and arguments."""

    def __init__(self, vw: Workspace, arguments: str) -> None:
        tokens = parse_arguments(arguments)
        self._vw = vw
        self._mask = vw.num_weights() - 1
        self._ns_hash = {ns: vw.hash_space(ns) for ns in _PRINTABLE}
        self._hash_cache: dict[tuple[str, str], int] = {}
        ignored = {c for k, t in enumerate(tokens[:-1]) if t == "--ignore" for c in tokens[k + 1]}
        kept = {c for k, t in enumerate(tokens[:-1]) if t == "--keep" for c in tokens[k + 1]}
        self._no_linear = {c for k, t in enumerate(tokens[:-1]) if t == "--ignore_linear" for c in tokens[k + 1]}
        self._active = [ns for ns in _PRINTABLE if ns not in ignored and (not kept or ns in kept)]
        self._constant = "--noconstant" not in tokens
        user = [tokens[k + 1] for k, t in enumerate(tokens[:-1]) if t in _INTERACTION_OPTIONS]
        self.supported = _supported(tokens)
        # CCB (always on here: every slot carries its id feature) adds each interaction x the slot
        # index, and each namespace x the slot index; "#" stands for the index namespace.
        self._interactions = _expand([*user, *(u + "#" for u in user), ":#"], self._active)
        self._index_hash: dict[int, int] = {}
        self._structures: dict[tuple, list[tuple[tuple[int, ...], int, float]]] = {}
        self._grouped: dict[tuple, tuple] = {}  # by the identity of memoized feature lists (parse_features)

    def _hash(self, ns: str, token: str) -> int:
        key = (ns, token)
        h = self._hash_cache.get(key)
        if h is None:
            h = self._vw.hash_feature(token, self._ns_hash[ns])
            if len(self._hash_cache) < 100_000:
                self._hash_cache[key] = h
        return h

    def _slot_index(self, k: int) -> int:
        h = self._index_hash.get(k)
        if h is None:
            h = self._index_hash[k] = self._vw.hash_feature(f"index{k}", self._vw.hash_space(_CCB_ID_NAMESPACE))
        return h

    def terms(self, context: Sequence[Feature], action: Sequence[Feature], slot: Sequence[Feature],
              position: int, *, with_action_only: bool = False) -> list[tuple[tuple[Feature, ...], float]]:
        """Every term of one action's score in slot ``position``: (players in it, weight x value).

        ``with_action_only``: only the terms holding an action feature (the others are the
        same for every action of the slot, so they cancel in a difference).
        """
        players = [*context, *action, *slot]
        structure = self._structure(context, action, slot, position, with_action_only)
        vw, get_weight = self._vw, pylibvw.vw.get_weight
        return [(tuple(players[i] for i in who), get_weight(vw, h, 0) * x) for who, h, x in structure]

    def grouped(self, context: Sequence[Feature], action: Sequence[Feature], slot: Sequence[Feature],
                position: int) -> list[tuple[tuple[tuple[str, str], ...], tuple[Feature, ...], float]]:
        """The action-holding terms of one action's score summed per group of features, zeros left out.

        A group is the set of (role, name) of a term's players, sorted: the same crossing of
        features in any action, so two actions' groups can be set against each other. Within one
        action a group always has the same players (one value per key), so its terms add up.
        """
        key = (id(context), id(action), id(slot), position)
        shaped = self._grouped.get(key)
        if shaped is None or shaped[0] is not context or shaped[1] is not action or shaped[2] is not slot:
            players = [*context, *action, *slot]
            order: dict[tuple[tuple[str, str], ...], int] = {}
            heads: list[tuple[tuple[tuple[str, str], ...], tuple[Feature, ...]]] = []
            hashes: list[int] = []
            values: list[float] = []
            group_of: list[int] = []
            for who, h, x in self._structure(context, action, slot, position, True):
                if who:
                    chosen = tuple(players[i] for i in who)
                    gkey = tuple(sorted(f.key for f in chosen))
                    g = order.get(gkey)
                    if g is None:
                        g = order[gkey] = len(heads)
                        heads.append((gkey, chosen))
                    hashes.append(h)
                    values.append(x)
                    group_of.append(g)
            if len(self._grouped) >= _MAX_STRUCTURES:
                self._grouped.clear()
            shaped = self._grouped[key] = (context, action, slot, heads, hashes, values, group_of)
        _, _, _, heads, hashes, values, group_of = shaped
        vw, get_weight = self._vw, pylibvw.vw.get_weight
        weights = [get_weight(vw, h, 0) for h in hashes]
        sums = [0.0] * len(heads)
        for g, w, x in zip(group_of, weights, values, strict=True):
            sums[g] += w * x
        return [(gkey, chosen, v) for (gkey, chosen), v in zip(heads, sums, strict=True) if v != 0.0]

    def _structure(self, context: Sequence[Feature], action: Sequence[Feature], slot: Sequence[Feature],
                   position: int, with_action_only: bool) -> list[tuple[tuple[int, ...], int, float]]:
        """The terms' (player indices, masked weight index, value product): what depends on the features only.

        Memoized: the weights change as the model learns, the terms of a feature set never do.
        """
        key = (tuple(f.token for f in context), tuple(f.token for f in action), tuple(f.token for f in slot),
               tuple(f.x for f in (*context, *action, *slot)), position, with_action_only)
        hit = self._structures.get(key)
        if hit is not None:
            return hit
        nc, na = len(context), len(action)
        by_ns: dict[str, list[tuple[int, int, float]]] = {
            CONTEXT_NAMESPACE: [(i, self._hash(CONTEXT_NAMESPACE, f.token), f.x) for i, f in enumerate(context)],
            ACTION_NAMESPACE: [(nc + i, self._hash(ACTION_NAMESPACE, f.token), f.x) for i, f in enumerate(action)],
            SLOT_NAMESPACE: [(nc + na + i, self._hash(SLOT_NAMESPACE, f.token), f.x) for i, f in enumerate(slot)],
            "#": [(-1, self._slot_index(position), 1.0)],
        }
        for ns in _PRINTABLE:
            if ns not in self._active:
                by_ns[ns] = []
        mask = self._mask
        out: list[tuple[tuple[int, ...], int, float]] = []
        for ns in [ns for ns in self._active if ns not in self._no_linear] + ["#"]:
            if with_action_only and ns != ACTION_NAMESPACE:
                continue
            for i, h, x in by_ns[ns]:
                out.append(((i,) if i >= 0 else (), h & mask, x))
        if self._constant and not with_action_only:
            out.append(((), _CONSTANT_HASH & mask, 1.0))
        for term in self._interactions:
            if with_action_only and ACTION_NAMESPACE not in term:
                continue
            for combo in _combinations(term, by_ns):
                h = combo[0][1]
                x = combo[0][2]
                for _, hk, xk in combo[1:]:
                    h = ((_FNV * h) & _MASK64) ^ hk
                    x *= xk
                who: list[int] = []
                for i, _, _ in combo:
                    if i >= 0 and i not in who:
                        who.append(i)
                out.append((tuple(who), h & mask, x))
        if len(self._structures) >= _MAX_STRUCTURES:
            self._structures.clear()  # clear-on-budget, as the encoder's memo
        self._structures[key] = out
        return out


def _supported(tokens: Sequence[str]) -> bool:
    """Whether one linear model scores the actions (several models, or a non-linear one, cannot be split so)."""
    several = ("--bag", "--cover", "--rnd", "--nn", "--regcb", "--regcbopt", "--synthcover")
    if any(t in tokens for t in several):
        return False
    return option_value(tokens, "--l2") in (None, "0", "0.0")


def _expand(interactions: Iterable[str], active: Sequence[str]) -> list[str]:
    """Interaction strings with VW's ``:`` wildcard expanded (combinations with repetition, sorted), deduplicated.

    VW skips an interaction equal to an earlier one up to the order of its namespaces.
    """
    out: list[str] = []
    seen: set[tuple[str, ...]] = set()
    for inter in interactions:
        fixed = [c for c in inter if c != ":"]
        wild = len(inter) - len(fixed)
        fills = itertools.combinations_with_replacement(active, wild) if wild else [()]
        for fill in fills:
            it = iter(fill)
            term = "".join(next(it) if c == ":" else c for c in inter)
            key = tuple(sorted(term))
            if key in seen:
                continue
            seen.add(key)
            out.append(term)
    return out


def _combinations(term: str, by_ns: dict[str, list[tuple[Feature | None, int, float]]]
                  ) -> Iterable[list[tuple[Feature | None, int, float]]]:
    """The feature tuples VW crosses for one interaction: a namespace repeated next to itself
    takes each unordered pair once (j >= i), as VW does without ``--permutations``."""
    lists = [by_ns.get(ns, []) for ns in term]
    if any(not lst for lst in lists):
        return

    def rec(p: int, start: int, acc: list[tuple[Feature | None, int, float]]) -> Iterable[list]:
        if p == len(term):
            yield list(acc)
            return
        lst = lists[p]
        first = start if p > 0 and term[p] == term[p - 1] else 0
        for i in range(first, len(lst)):
            acc.append(lst[i])
            yield from rec(p + 1, i, acc)
            acc.pop()

    yield from rec(0, 0, [])


# ---------------------------------------------------------------- explanations of a ranked page

def _feature_dict(f: Feature) -> dict[str, object]:
    return {"namespace": f.role, "featureName": f.name, "value": f.value}


def explain_page(vw: Workspace, explainer: Explainer, head: Sequence[str], bodies: Sequence[str],
                 allowed: Sequence[Sequence[int]], chosen: Sequence[int], action_ids: Sequence[str],
                 top: int = 3, last: SlotScores | None = None) -> list[dict[str, object]]:
    """Per slot, why its action beat the runner-up: plain dicts, strongest reasons first.

    Scores are in reward units (VW predicts a cost; the reward is its negative). A slot
    whose action was not the model's favourite explored, and says so instead.
    """
    if not explainer.supported:
        why = "this policy scores actions with several models or a non-linear one; they cannot be split by feature"
        return [{"available": False, "explored": None, "reason": why} for _ in bodies]
    context = parse_features(head[0])
    actions = [parse_features(_namespace_part(line)) for line in head[1:]]
    out: list[dict[str, object]] = []
    for scores in slot_scores(vw, head, bodies, allowed, chosen, last):
        k = scores.slot
        out.append(_explain_slot(explainer, scores.scores, chosen[k], k, context, actions,
                                 parse_features(_namespace_part(bodies[k])), action_ids, top))
    return out


def _explain_slot(explainer: Explainer, costs: dict[int, float], pick: int, position: int,
                  context: list[Feature], actions: list[list[Feature]], slot: list[Feature],
                  action_ids: Sequence[str], top: int) -> dict[str, object]:
    ranked = sorted(costs, key=lambda a: (costs[a], a))
    chosen = {"actionId": action_ids[pick], "score": -costs[pick]}
    if len(ranked) < 2:
        return {"available": False, "explored": False, "chosen": chosen,
                "reason": "only one action could fill this slot: there was no choice to explain"}
    favourite = ranked[0]
    if costs[pick] > costs[favourite]:
        return {"available": False, "explored": True, "chosen": chosen,
                "favourite": {"actionId": action_ids[favourite], "score": -costs[favourite]},
                "reason": f"explored: the model prefers '{action_ids[favourite]}' here; this slot showed "
                          f"'{action_ids[pick]}' to keep learning about it"}
    runner = next(a for a in ranked if a != pick)
    margin = costs[runner] - costs[pick]
    # Per group of crossed features: [chosen's players, runner-up's, value]; reward = -cost, so the
    # chosen action's terms count for it and the runner-up's against.
    groups: dict[tuple[tuple[str, str], ...], list] = {
        key: [players, None, -value]
        for key, players, value in explainer.grouped(context, actions[pick], slot, position)}
    for key, players, value in explainer.grouped(context, actions[runner], slot, position):
        group = groups.get(key)
        if group is None:
            groups[key] = [None, players, value]
        else:
            group[1] = players
            group[2] += value
    per_feature: dict[tuple[str, str], float] = {}
    for key, group in groups.items():  # a group's value goes in equal parts to its features
        share = group[2] / len(key)
        for k in key:
            per_feature[k] = per_feature.get(k, 0.0) + share
    explained = sum(g[2] for g in groups.values())
    if abs(explained - margin) > TOLERANCE * max(1.0, abs(margin)):
        return {"available": False, "explored": False, "chosen": chosen,
                "reason": "this policy's scores could not be split by feature (its terms did not add up to "
                          "the model's score)"}
    ordered = sorted(groups.values(), key=lambda g: -abs(g[2]))
    shown_reasons = []
    for mine, theirs, value in ordered[:top]:  # words only for the reasons shown
        shown = mine or theirs
        text = " x ".join(f.text() for f in shown)
        if mine is None:
            text += f" (of '{action_ids[runner]}')"
        shown_reasons.append({"features": [_feature_dict(f) for f in shown], "text": f"{text}: {value:+.2f}",
                              "contribution": value})
    rest = sum(g[2] for g in ordered[top:])
    mine_of = {f.key: f for f in (*context, *actions[pick], *slot)}
    theirs_of = {f.key: f for f in (*context, *actions[runner], *slot)}
    features = []
    for (role, name), value in sorted(per_feature.items(), key=lambda kv: -abs(kv[1])):
        mine, theirs = mine_of.get((role, name)), theirs_of.get((role, name))
        features.append({"namespace": role, "featureName": name,
                         "value": mine.value if mine is not None else None,
                         "runnerUpValue": theirs.value if theirs is not None else None, "contribution": value})
    return {
        "available": True, "explored": False, "chosen": chosen,
        "runnerUp": {"actionId": action_ids[runner], "score": -costs[runner]},
        "margin": margin, "reasons": shown_reasons, "rest": rest,
        "text": [r["text"] for r in shown_reasons] + ([f"everything else: {rest:+.2f}"] if ordered[top:] else []),
        "features": features,
    }
