"""Personalizer JSON features -> Vowpal Wabbit conditional contextual bandit examples.

Encoding (one rule, so replay and evaluation rebuild the exact same examples):
- each top-level key of a feature object becomes a namespace; a string value
  becomes the feature ``key=value``, a number ``key:value``, a boolean
  ``key=true|false``; null is skipped; an array of numbers ``key[i]:value``;
- a nested object is a namespace of its own; its keys become features as above;
- keys starting with ``_`` are ignored, as Personalizer did;
- every action also gets its id in namespace ``_`` and every slot its id in
  namespace ``~``, so items with identical features stay distinguishable;
- keys are taken in sorted order, so key order never changes the example;
- every name is percent-escaped, so ``|``, ``:``, ``=``, spaces, quotes or newlines in
  a name or value can never break the line or inject a feature.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

# Characters that mean something in VW's text format, plus '%' so escaping is reversible.
_ESCAPES = {ord(c): f"%{ord(c):02X}" for c in "|: \t\n\r\x0b\x0c%'="}
_ESCAPES.update({i: f"%{i:02X}" for i in range(32) if i not in _ESCAPES})
# User namespaces must not start with the reserved namespace characters.
_RESERVED_FIRST = {ord("_"): "%5F", ord("~"): "%7E"}

ACTION_ID_NAMESPACE = "_"
SLOT_ID_NAMESPACE = "~"


def escape(text: str) -> str:
    """Percent-escape the characters that are syntax in a VW text example."""
    return text.translate(_ESCAPES)


def _namespace(name: str) -> str:
    name = escape(name)
    return name[0].translate(_RESERVED_FIRST) + name[1:]


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _features(obj: dict[str, Any], out: list[str], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Append ``obj``'s scalar features to ``out``; return its nested namespaces."""
    nested: list[tuple[str, dict[str, Any]]] = []
    for key, value in sorted(obj.items()):
        if key[:1] == "_" or value is None:
            continue
        name = escape(prefix + key) if prefix else escape(key)
        if isinstance(value, str):
            out.append(f"{name}={escape(value)}")
        elif isinstance(value, bool):
            out.append(f"{name}={'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            out.append(f"{name}:{_number(value)}")
        elif isinstance(value, dict):
            nested.append((key, value))
        elif isinstance(value, list):
            out.extend(f"{name}[{i}]:{_number(v)}" for i, v in enumerate(value))
    return nested


_SCALARS: dict[tuple[str, Any, type], str] = {}


def _scalar_namespace(key: str, value: Any) -> str:
    """``|key key=value`` for one top-level scalar feature, memoized: catalogs repeat these."""
    cache_key = (key, value, type(value))
    hit = _SCALARS.get(cache_key)
    if hit is None:
        feats: list[str] = []
        _features({key: value}, feats)
        hit = f"|{_namespace(key)} {' '.join(feats)}" if feats else ""
        if len(_SCALARS) > 100_000:
            _SCALARS.clear()
        _SCALARS[cache_key] = hit
    return hit


def namespaces(feature_objects: Iterable[dict[str, Any]]) -> str:
    """Encode a list of feature objects as VW namespaces: ``|ns f1 f2 |ns2 ...``."""
    parts: list[str] = []
    for obj in feature_objects:
        # Sorted keys: the same object always makes the same line, however its keys were
        # ordered (the log stores requests with sorted keys, and replay must match live).
        for key, value in sorted(obj.items()):
            if key[:1] == "_" or value is None:
                continue
            if isinstance(value, dict):
                _encode_namespace(key, value, parts)
            elif isinstance(value, list):
                feats: list[str] = []
                _features({key: value}, feats)
                if feats:
                    parts.append(f"|{_namespace(key)} {' '.join(feats)}")
            else:
                hit = _scalar_namespace(key, value)
                if hit:
                    parts.append(hit)
    return " ".join(parts)


def _encode_namespace(key: str, obj: dict[str, Any], parts: list[str], path: str = "") -> None:
    feats: list[str] = []
    deeper = _features(obj, feats, path)
    if feats:
        parts.append(f"|{_namespace(key)} {' '.join(feats)}")
    for sub_key, sub_obj in deeper:
        # Deeper objects stay in the top-level namespace with a dotted path.
        _encode_namespace(key, sub_obj, parts, f"{path}{sub_key}.")


def shared_line(context_features: Sequence[dict[str, Any]]) -> str:
    """The ``ccb shared`` line for a context."""
    # A bare "ccb shared" does not parse: an empty context still needs its bar.
    return f"ccb shared {namespaces(context_features) or '|'}"


def action_line(action_id: str, features: Sequence[dict[str, Any]]) -> str:
    """The ``ccb action`` line for one action."""
    return f"ccb action |{ACTION_ID_NAMESPACE} {escape(action_id)} {namespaces(features)}".rstrip()


def slot_body(slot_id: str, features: Sequence[dict[str, Any]], tag: str | None) -> str:
    """Everything of a slot line after its label and allowed-action list: tag and features."""
    tag_text = f"'{escape(tag)}" if tag is not None else ""
    return f"{tag_text}|{SLOT_ID_NAMESPACE} {escape(slot_id)} {namespaces(features)}".rstrip()


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
    tag = None if seed is None else f"seed={seed}"
    lines = [shared_line(context_features)]
    lines.extend(action_line(a_id, feats) for a_id, feats in actions)
    lines.extend(slot_line(slot_body(s_id, feats, tag), allowed) for s_id, feats, allowed in slots)
    return lines
