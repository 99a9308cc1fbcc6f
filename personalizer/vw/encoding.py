"""Personalizer JSON features -> Vowpal Wabbit conditional contextual bandit examples.

The one place that writes VW's text format (the engine, replay and evaluation all
call it, so live ranking, replay and offline evaluation build the very same lines).

Encoding (one rule, so replay and evaluation rebuild the exact same examples):
- every feature goes into one namespace per role: ``@`` for the context, ``_``
  for an action, ``~`` for a slot. A string value becomes the feature
  ``key=value``, a number ``key:value``, a boolean ``key=true|false``; null is
  skipped; an array of numbers ``key[i]:value``;
- nested objects add a dotted path to the name (``user.geo.city=Oslo``), so
  how a caller groups its JSON never changes what can be learned;
- every action also carries its id (``_id=``) and every slot its id, so items
  with identical features stay distinguishable;
- keys starting with ``_`` are ignored, as Personalizer did;
- keys are taken in sorted order, so key order never changes the example;
- every name is percent-escaped, so ``|``, ``:``, ``=``, spaces, quotes or
  newlines can never break the line or inject a feature or a namespace.

Three fixed namespaces make interactions cheap and predictable: the default
policy's ``--cubic @@_`` crosses every pair of context features with every action
feature (time x device x product), and VW's CCB reduction crosses everything with
the slot position on its own. Custom policies can name the same three letters.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from typing import Any

# Characters that mean something in VW's text format, plus '%' so escaping is reversible.
_ESCAPES = {ord(c): f"%{ord(c):02X}" for c in "|: \t\n\r\x0b\x0c%'="}
_ESCAPES.update({i: f"%{i:02X}" for i in range(32) if i not in _ESCAPES})

CONTEXT_NAMESPACE = "@"
ACTION_NAMESPACE = "_"
SLOT_NAMESPACE = "~"


def escape(text: str) -> str:
    """Percent-escape the characters that are syntax in a VW text example."""
    return text.translate(_ESCAPES)


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


#: Byte budget of the scalar memo: catalogs repeat their feature texts, but a caller sending
#: unique 1 MB strings must not grow the process for good (an entry cap alone allowed GBs).
SCALAR_CACHE_BYTES = 4 * 1024 * 1024
#: Texts longer than this are never memoized: they would evict everything for one use.
_SCALAR_MAX_ENTRY = 4096
_ENTRY_OVERHEAD = 200  # dict slot, tuple, str headers: roughly, per entry

_SCALARS: dict[tuple[str, Any, type], str] = {}
_scalar_bytes = 0


def scalar_cache_bytes() -> int:
    """Approximate bytes the scalar memo holds now (never above ``SCALAR_CACHE_BYTES``)."""
    return _scalar_bytes


def _scalar(key: str, value: Any) -> str:
    """The feature text of one scalar or numeric-array value, memoized: catalogs repeat these."""
    global _scalar_bytes
    if isinstance(value, list):  # an array of numbers (validated by the contract): never memoized
        name = escape(key)
        return " ".join(f"{name}[{i}]:{_number(v)}" for i, v in enumerate(value))
    cache_key = (key, value, type(value))
    hit = _SCALARS.get(cache_key)
    if hit is not None:
        return hit
    name = escape(key)
    if isinstance(value, str):
        text = f"{name}={escape(value)}"
    elif isinstance(value, bool):
        text = f"{name}={'true' if value else 'false'}"
    else:
        text = f"{name}:{_number(value)}"
    size = len(key) + len(text) + (len(value) if isinstance(value, str) else 8) + _ENTRY_OVERHEAD
    if size > _SCALAR_MAX_ENTRY:
        return text
    if _scalar_bytes + size > SCALAR_CACHE_BYTES:
        _SCALARS.clear()  # clear-on-budget: cheaper than LRU bookkeeping on every hit
        _scalar_bytes = 0
    _SCALARS[cache_key] = text
    _scalar_bytes += size
    return text


def _flatten(obj: dict[str, Any], prefix: str, out: list[str]) -> None:
    """All features of a nested object, deeper keys as dotted paths."""
    for key, value in sorted(obj.items()):
        if key[:1] == "_" or value is None:
            continue
        if isinstance(value, dict):
            _flatten(value, f"{prefix}{key}.", out)
        else:
            out.append(_scalar(prefix + key, value))


def namespaces(feature_objects: Iterable[dict[str, Any]], role: str, extra: str = "") -> str:
    """Encode feature objects as the role's namespace: ``|@ f1 f2 ...`` (``extra`` first)."""
    flat: list[str] = [extra] if extra else []
    for obj in feature_objects:
        _flatten(obj, "", flat)
    return f"|{role} {' '.join(flat)}" if flat else f"|{role}"


def shared_line(context_features: Sequence[dict[str, Any]]) -> str:
    """The ``ccb shared`` line for a context."""
    return f"ccb shared {namespaces(context_features, CONTEXT_NAMESPACE)}"


def action_line(action_id: str, features: Sequence[dict[str, Any]]) -> str:
    """The ``ccb action`` line for one action (its id is a feature too)."""
    return f"ccb action {namespaces(features, ACTION_NAMESPACE, '_id=' + escape(action_id))}"


def slot_body(slot_id: str, features: Sequence[dict[str, Any]], seed: str | None) -> str:
    """Everything of a slot line after its label and allowed-action list: tag and features.

    The tag ``'seed=<seed>`` makes VW's exploration draw for the slot deterministic.
    """
    return f"{seed_tag(seed)}{namespaces(features, SLOT_NAMESPACE, '_id=' + escape(slot_id))}"


def seeded_slot_body(untagged: str, event_id: str, position: int) -> str:
    """``slot_body`` of a slot from its untagged body (``slot_body(id, features, None)``) and the event:
    what every event of one request shares is encoded once, only the seed tag differs."""
    return seed_tag(slot_seed(event_id, position)) + untagged


def seed_tag(seed: str | None) -> str:
    """The tag ``'seed=<seed>`` that makes VW's exploration draw deterministic ('' for no seed)."""
    return f"'seed={escape(seed)}" if seed is not None else ""


def slot_seed(event_id: str, position: int) -> str:
    """The seed of one slot of an event: ``<eventId>#<slot position>``.

    One seed for the whole event would give every slot the same random draw, so later
    slots would explore exactly when the first one does and their logged probabilities
    would be wrong.
    """
    return f"{event_id}#{position}"


def slot_line(body: str, allowed: Sequence[int], label: str = "") -> str:
    """A ``ccb slot`` line: optional label ``action:cost:probability``, allowed indices, body."""
    allowed_text = ",".join(map(str, allowed))
    return f"ccb slot {label} {allowed_text} {body}"


def example(
    context_features: Sequence[dict[str, Any]],
    actions: Sequence[tuple[str, Sequence[dict[str, Any]]]],
    slots: Sequence[tuple[str, Sequence[dict[str, Any]], Sequence[int]]],
    seed: str | None = None,
) -> list[str]:
    """A whole unlabeled CCB example: shared line, action lines, slot lines (seeded by ``seed``)."""
    lines = [shared_line(context_features)]
    lines.extend(action_line(a_id, feats) for a_id, feats in actions)
    lines.extend(slot_line(slot_body(s_id, feats, seed), allowed) for s_id, feats, allowed in slots)
    return lines


Encoded = tuple[list[str], list[str], list[list[int]], dict[str, int]]


def encode_request(request: dict[str, Any], event_id: str) -> Encoded:
    """VW lines of a canonical (logged) request: head lines, slot bodies, allowed action indices, action index.

    Each slot is seeded with ``slot_seed(event_id, position)``.
    """
    index = {a["id"]: i for i, a in enumerate(request["actions"])}
    head = [shared_line(request["contextFeatures"])]
    head.extend(action_line(a["id"], a["features"]) for a in request["actions"])
    bodies, allowed = [], []
    n = len(index)
    for k, slot in enumerate(request["slots"]):
        excluded = {index[x] for x in slot["excludedActions"]}
        allowed.append([i for i in range(n) if i not in excluded])
        bodies.append(slot_body(slot["id"], slot["features"], slot_seed(event_id, k)))
    return head, bodies, allowed, index


_CONTEXT_FIRST = '{"contextFeatures":'
_ACTIONS_KEY = ',"actions":'


def catalog_key(request: dict[str, Any], canonical_json: str | None = None) -> bytes | str:
    """A key equal for two requests exactly when their catalogs (actions and slots) are equal.

    Given the request's canonical JSON as the contract writes it (``contextFeatures``
    first), the key is the text from the first ``,"actions":`` on: the whole catalog
    and nothing of the context unless the context itself holds that text (then the key
    is merely more specific). JSON's grammar makes that suffix parse one way only, so
    equal suffixes mean equal catalogs. Cheap: a rank spends no time re-serializing.
    Otherwise (or if the text is not laid out that way) a digest of actions and slots.
    """
    if canonical_json is not None and canonical_json.startswith(_CONTEXT_FIRST):
        at = canonical_json.find(_ACTIONS_KEY)
        if at > 0:
            return canonical_json[at:]
    text = json.dumps([request["actions"], request["slots"]], separators=(",", ":"),
                      ensure_ascii=False, check_circular=False)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class CatalogCache:
    """Encoded actions and slots of recently seen catalogs, keyed by a digest of the catalog.

    Apps send the same catalog with every rank; only the context and the seed tags
    change. Re-encoding the catalog was a fifth of a seed-sized rank. Bounded by
    bytes (least recently used out first): catalogs can carry large feature values.
    """

    def __init__(self, max_bytes: int = 16 * 1024 * 1024) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[bytes | str, tuple[list[str], list[str], list[list[int]], dict[str, int], int]] = \
            OrderedDict()
        self._recent: deque[tuple[dict[str, Any], str]] = deque(maxlen=3)

    @property
    def bytes(self) -> int:
        """Approximate bytes of encoded text held now."""
        return self._bytes

    def recent(self) -> list[tuple[dict[str, Any], str]]:
        """The last few requests encoded (with their event ids): what live traffic looks like now."""
        return list(self._recent)

    def encode(self, canonical: dict[str, Any], event_id: str, canonical_json: str | None = None) -> Encoded:
        """Exactly ``encode_request(canonical, event_id)``, reusing the catalog's encoding.

        ``canonical_json``: the request's canonical JSON text, if the caller has it (a faster key).
        """
        self._recent.append((canonical, event_id))
        key = catalog_key(canonical, canonical_json)
        entry = self._entries.get(key)
        if entry is None:
            head, _, allowed, index = encode_request({**canonical, "contextFeatures": []}, event_id)
            untagged = [slot_body(s["id"], s["features"], None) for s in canonical["slots"]]
            size = (len(key) + sum(map(len, head)) + sum(map(len, untagged)) + 64 * len(index)
                    + 8 * sum(map(len, allowed)))
            entry = (head[1:], untagged, allowed, index, size)
            if size <= self._max_bytes:
                self._entries[key] = entry
                self._bytes += size
                while self._bytes > self._max_bytes:
                    self._bytes -= self._entries.popitem(last=False)[1][4]
        else:
            self._entries.move_to_end(key)
        action_lines, untagged, allowed, index, _ = entry
        head = [shared_line(canonical["contextFeatures"]), *action_lines]
        bodies = [f"{seed_tag(slot_seed(event_id, k))}{body}" for k, body in enumerate(untagged)]
        return head, bodies, allowed, index
