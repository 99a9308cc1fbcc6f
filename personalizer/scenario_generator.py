"""Random scenarios drawn from a seed, to choose learning policies on data nobody tuned for.

:func:`generate` draws one :class:`~personalizer.simulation.Scenario` from a seed
and a family; :func:`suite` draws a fixed list of them. Every scenario is plain
scenario JSON (the ``features`` preference type), so it can be saved, picked in
the dashboard and replayed exactly, and it knows its oracle (the simulator's
exact best page per context) and which features matter (``relevance``).

What varies, per seed:
- catalog: 2..MAX_ACTIONS actions with categorical, numeric and nested features (some
  used by the hidden preferences, some pure noise), 1..6 slots with features,
  exclusions and baselines; every catalog passes the engine's own rank validation;
- context: 1..8 features, categorical, numeric (levels in [0, 1]) and nested
  (``user.tier`` is sent as ``{"user": {"tier": ...}}``), at most
  :data:`MAX_CONTEXTS` combinations so the oracle stays exact;
- family (the shape of the hidden preferences):
  ``additive``: action and slot x action effects, context shifts every action
  alike (the best page is the same for everyone);
  ``pairwise``: context x action effects, summed over 1..3 context features;
  ``joint``: one (context x context) x action effect neither feature shows alone;
  ``sparse``: a few (context value, action) hits on a flat background;
- rewards: binary (accept / reject) or graded in [-1, 1] with noise, sometimes a
  drift halfway, rewards that arrive late, or never for a share of events.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .contract import MAX_ACTIONS, MultiSlotRankRequest, parse
from .simulation import SCENARIO_DIR, Scenario

__all__ = ["EXAMPLE_SEEDS", "FAMILIES", "MAX_CONTEXTS", "check_rank_contract", "generate", "save_examples", "suite"]

FAMILIES = ("additive", "pairwise", "joint", "sparse")
#: Most context combinations a scenario has: the oracle is solved for each.
MAX_CONTEXTS = 256
#: Generated scenarios saved under personalizer/scenarios/ (one per family, dashboard-sized).
EXAMPLE_SEEDS = (280, 309, 190, 287)

_CATEGORICAL = {
    "time": ["morning", "afternoon", "evening", "night", "late-night"],
    "device": ["mobile", "desktop", "tablet", "tv", "watch"],
    "weather": ["sunny", "rainy", "snowy", "cloudy"],
    "region": ["north", "south", "east", "west", "center"],
    "channel": ["search", "email", "social", "direct", "ads"],
    "language": ["en", "de", "fr", "es", "ja"],
    "season": ["spring", "summer", "autumn", "winter"],
    "referrer": ["news", "blog", "partner", "video"],
}
_NESTED = {
    "user.tier": ["free", "silver", "gold", "platinum"],
    "user.returning": ["yes", "no"],
    "geo.country": ["NO", "DE", "JP", "BR", "US"],
    "session.source": ["app", "web", "kiosk"],
}
_NUMERIC = ["age", "user.activity", "basketSize", "geo.distance", "loyalty"]
_CATEGORIES = ["Clothing", "Sports", "Electronics", "Books", "Garden", "Toys"]
_BRANDS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli"]
_COLORS = ["red", "green", "blue", "black", "white"]
_SIZES = ["large", "medium", "small"]


def check_rank_contract(scenario: Scenario) -> None:
    """Raise PersonalizerError unless the scenario's catalog is a valid multi-slot rank request.

    The engine's own rules (the contract model with its cross-field validator), so a
    generated catalog can never pass here and fail at rank time.
    """
    parse(MultiSlotRankRequest, scenario.rank_request(scenario.contexts[0]), "InvalidRankRequest")


def _log_uniform_int(rng: random.Random, low: int, high: int) -> int:
    return min(high, max(low, round(math.exp(rng.uniform(math.log(low), math.log(high + 0.5))))))


def _context(rng: random.Random) -> tuple[dict[str, list[Any]], list[str]]:
    """1..8 context features (categorical, nested, numeric), at most MAX_CONTEXTS combinations."""
    n_dims = rng.randint(1, 8)
    pool = [("cat", n) for n in _CATEGORICAL] + [("nested", n) for n in _NESTED] + [("num", n) for n in _NUMERIC]
    rng.shuffle(pool)
    options: dict[str, list[Any]] = {}
    numeric: list[str] = []
    combos = 1
    for kind, name in pool:
        if len(options) == n_dims:
            break
        room = MAX_CONTEXTS // combos
        if room < 2:
            break
        # Leave room for the features still to come: each needs at least two values.
        left = n_dims - len(options) - 1
        cap = max(2, room // (2 ** left)) if left > 0 else room
        if kind == "num":
            levels = min(rng.randint(2, 4), cap)
            options[name] = [round(i / (levels - 1), 3) for i in range(levels)]
            numeric.append(name)
        else:
            values = _CATEGORICAL[name] if kind == "cat" else _NESTED[name]
            count = min(rng.randint(2, len(values)), cap)
            options[name] = values[:count]
        combos *= len(options[name])
    return options, numeric


def _catalog(rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Actions with features that may matter and features that never do; slots with features."""
    n_actions = _log_uniform_int(rng, 2, MAX_ACTIONS)
    n_categories = rng.randint(2, min(len(_CATEGORIES), max(2, n_actions)))
    n_brands = rng.randint(2, len(_BRANDS))
    actions = []
    for i in range(n_actions):
        actions.append({
            "id": f"item-{i:02d}",
            "features": [
                {"category": _CATEGORIES[i % n_categories] if i < n_categories else rng.choice(
                    _CATEGORIES[:n_categories]), "brand": rng.choice(_BRANDS[:n_brands])},
                {"price": round(rng.uniform(5, 500), 2), "details": {"color": rng.choice(_COLORS),
                                                                   "sku": f"s{rng.randrange(10_000)}"}},
            ],
        })
    n_slots = rng.randint(1, min(6, n_actions - 1))  # an action left over: a choice in every slot
    ids = [a["id"] for a in actions]
    baselines = rng.sample(ids, n_slots)
    slots = []
    for k in range(n_slots):
        excluded: list[str] = []
        if n_actions > n_slots + 1 and rng.random() < 0.35:
            # Few enough exclusions that every later slot can still be filled.
            budget = rng.randint(1, max(1, (n_actions - n_slots) // 3))
            excluded = sorted(rng.sample([a for a in ids if a != baselines[k]], budget))
        slots.append({
            "id": f"slot-{k}",
            "features": [{"size": _SIZES[min(k, len(_SIZES) - 1)] if rng.random() < 0.8 else rng.choice(_SIZES),
                          "position": k}],
            "excludedActions": excluded,
            "baselineAction": baselines[k],
        })
    return actions, slots


def _weights(rng: random.Random, keys: Sequence[str], scale: float) -> dict[str, float]:
    return {k: round(rng.gauss(0.0, scale), 4) for k in keys}


def _keys(*parts: Sequence[Any]) -> list[str]:
    out = [""]
    for values in parts:
        out = [f"{o}|{v}" if o else str(v) for o in out for v in values]
    return out


def _profile(rng: random.Random, family: str, options: dict[str, list[Any]], numeric: list[str],
             actions: list[dict], slots: list[dict], graded: bool) -> tuple[dict, set[str], set[str], set[str]]:
    """One preference profile of the family: terms, and the context/action/slot features it uses."""
    categories = sorted({a["features"][0]["category"] for a in actions})
    brands = sorted({a["features"][0]["brand"] for a in actions})
    ids = [a["id"] for a in actions]
    sizes = sorted({s["features"][0]["size"] for s in slots})
    names = list(options)
    scale = 0.35 if graded else 0.2
    base = round(rng.uniform(-0.2, 0.1), 3) if graded else round(rng.uniform(0.15, 0.35), 3)
    terms: list[dict] = []
    ctx_used: set[str] = set()
    act_used: set[str] = set()
    slot_used: set[str] = set()

    def term(context: list[str], action: str | None, weights: dict[str, float], slot: str | None = None) -> None:
        entry: dict[str, Any] = {"context": context}
        if slot is not None:
            entry["slot"] = slot
            slot_used.add(slot)
        if action is not None:
            entry["action"] = action
            act_used.add(action)
        entry["weights"] = weights
        terms.append(entry)
        ctx_used.update(context)

    def action_values(feature: str) -> list[str]:
        return {"category": categories, "brand": brands, "id": ids}[feature]

    def keyed(context: list[str]) -> list[list[Any]]:
        return [options[n] for n in context if n not in numeric]

    # Every family: items differ a little on their own (popularity), so ties are rare.
    term([], "id", _weights(rng, ids, scale * 0.3))
    if family == "additive":
        term([], "category", _weights(rng, categories, scale))
        if len(sizes) > 1 or rng.random() < 0.5:
            term([], "category", _weights(rng, _keys(sizes, categories), scale * 0.7), slot="size")
        shifter = rng.choice(names)  # moves every action alike: matters for reward, not for the choice
        term([shifter], None, _weights(rng, _keys(*keyed([shifter])) or [""], scale * 0.5)
             if shifter not in numeric else {"": round(rng.gauss(0, scale * 0.5), 4)})
    elif family == "pairwise":
        for name in rng.sample(names, rng.randint(1, min(3, len(names)))):
            feature = rng.choice(["category", "category", "brand", "id"])
            keys = _keys(*keyed([name]), action_values(feature))
            term([name], feature, _weights(rng, keys, scale * (1.6 if name in numeric else 1.0)))
        if rng.random() < 0.5:
            term([], "category", _weights(rng, _keys(sizes, categories), scale * 0.5), slot="size")
    elif family == "joint":
        pair = rng.sample(names, 2) if len(names) >= 2 else names
        feature = rng.choice(["category", "id"])
        keys = _keys(*keyed(pair), action_values(feature))
        term(pair, feature, _weights(rng, keys, scale * 1.4))
        term([], "category", _weights(rng, categories, scale * 0.4))
    else:  # sparse: a few context values make a few items shine
        name = rng.choice(names)
        hits = {}
        values = keyed([name])
        for _ in range(rng.randint(2, 6)):
            key = _keys(*( [[rng.choice(v)] for v in values] ), [rng.choice(ids)])[0]
            hits[key] = round(rng.uniform(0.35, 0.6) * (1.5 if graded else 1.0), 4)
        term([name], "id", hits)
        base = round(base - 0.05, 3)
    return {"type": "features", "base": base, "terms": terms}, ctx_used, act_used, slot_used


def generate(seed: int, family: str | None = None) -> Scenario:
    """One random scenario, the same for the same seed (and family; default: ``FAMILIES[seed % 4]``)."""
    family = FAMILIES[seed % len(FAMILIES)] if family is None else family
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")
    rng = random.Random(f"scenario-{seed}-{family}")
    options, numeric = _context(rng)
    if family == "joint" and len(options) < 2:  # a joint taste needs two context features
        options["device"] = _CATEGORICAL["device"][:3] if "device" not in options else options["device"]
        if len(options) < 2:
            options["time"] = _CATEGORICAL["time"][:4]
    actions, slots = _catalog(rng)
    graded = rng.random() < 0.4
    rewards: dict[str, Any] = {"type": "graded", "noise": round(rng.uniform(0.1, 0.5), 2)} if graded else {
        "type": "binary"}
    if rng.random() < 0.3:
        rewards["delay"] = rng.randint(5, 100)
    if rng.random() < 0.25:
        rewards["missing"] = round(rng.uniform(0.05, 0.3), 2)
    preferences, ctx_used, act_used, slot_used = _profile(rng, family, options, numeric, actions, slots, graded)
    data: dict[str, Any] = {
        "name": f"gen-{family}-{seed}",
        "description": (f"Generated ({family} tastes, seed {seed}): {len(actions)} actions, {len(slots)} slot(s), "
                        f"{len(options)} context feature(s), {rewards['type']} rewards"
                        + (f" arriving {rewards['delay']} events late" if "delay" in rewards else "")
                        + (f", {rewards['missing']:.0%} never rewarded" if "missing" in rewards else "") + "."),
        "context": options,
        "actions": actions,
        "slots": slots,
        "preferences": preferences,
        "rewards": rewards,
    }
    if rng.random() < 0.2:
        drifted, c2, a2, s2 = _profile(rng, family, options, numeric, actions, slots, graded)
        data["drift"] = {"at": 0.5, "preferences": drifted}
        data["description"] = data["description"][:-1] + "; tastes change halfway."
        ctx_used |= c2
        act_used |= a2
        slot_used |= s2
    action_features = ["id", "category", "brand", "price", "details.color", "details.sku"]
    data["relevance"] = {
        "matter": {"context": sorted(ctx_used), "action": sorted(act_used), "slot": sorted(slot_used)},
        "noise": {"context": sorted(set(options) - ctx_used),
                  "action": sorted(set(action_features) - act_used),
                  "slot": sorted({"id", "size", "position"} - slot_used)},
    }
    scenario = Scenario.from_dict(data)
    check_rank_contract(scenario)
    return scenario


def suite(count: int = 40, first_seed: int = 0) -> list[Scenario]:
    """``count`` scenarios from consecutive seeds: the families take turns."""
    return [generate(seed) for seed in range(first_seed, first_seed + count)]


def save_examples(directory: Path = SCENARIO_DIR, seeds: Sequence[int] = EXAMPLE_SEEDS) -> list[Path]:
    """Write the generated scenarios of ``seeds`` as ``<name>.json`` (what ships under scenarios/)."""
    paths = []
    for seed in seeds:
        scenario = generate(seed)
        path = Path(directory) / f"{scenario.name}.json"
        path.write_text(json.dumps(scenario.to_dict(), indent=2) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":  # python -m personalizer.scenario_generator [DIR]: refresh the saved examples
    for written in save_examples(Path(sys.argv[1]) if len(sys.argv) > 1 else SCENARIO_DIR):
        print(written)
