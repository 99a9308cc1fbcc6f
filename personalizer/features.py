"""Personalizer JSON features -> Vowpal Wabbit conditional contextual bandit examples.

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


_SCALARS: dict[tuple[str, Any, type], str] = {}


def _scalar(key: str, value: Any) -> str:
    """The feature text of one scalar or numeric-array value, memoized: catalogs repeat these."""
    cache_key = (key, value if not isinstance(value, list) else None, type(value))
    hit = _SCALARS.get(cache_key) if not isinstance(value, list) else None
    if hit is not None:
        return hit
    name = escape(key)
    if isinstance(value, str):
        text = f"{name}={escape(value)}"
    elif isinstance(value, bool):
        text = f"{name}={'true' if value else 'false'}"
    elif isinstance(value, (int, float)):
        text = f"{name}:{_number(value)}"
    else:  # an array of numbers (validated by the contract)
        return " ".join(f"{name}[{i}]:{_number(v)}" for i, v in enumerate(value))
    if len(_SCALARS) > 100_000:
        _SCALARS.clear()
    _SCALARS[cache_key] = text
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
    tag_text = f"'seed={escape(seed)}" if seed is not None else ""
    return f"{tag_text}{namespaces(features, SLOT_NAMESPACE, '_id=' + escape(slot_id))}"


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
