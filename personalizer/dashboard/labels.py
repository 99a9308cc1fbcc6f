"""Display names for a scenario's slots, actions, context fields and values (plain Python).

Ids are for machines ("XBox-Series X-117", "BigHeroPosition"); a product owner
reads names ("Xbox Series X", "Hero banner"). A scenario file may carry them in
an optional top-level ``display`` block, which the dashboard reads and removes
before the scenario itself is validated::

    "display": {"slots": {"BigHeroPosition": "Hero banner"},
                "actions": {"XBox-Series X-117": "Xbox Series X"},
                "context": {"time": "Time of day"},
                "values": {"time": {"morning": "Morning"}}}

Built-in scenarios take theirs from ``builtin_display.json`` beside this module
(the shipped scenario files are shared with the simulator, which knows no
``display`` field). Anything without a name falls back to its id; context field
names fall back to a capitalized form ("time" -> "Time").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .text import humanize

_BUILTIN = Path(__file__).with_name("builtin_display.json")
_PARTS = ("slots", "actions", "context", "values")


@dataclass(frozen=True)
class Labels:
    """Names to show for ids; every lookup falls back to the id."""

    slots: Mapping[str, str] = field(default_factory=dict)
    actions: Mapping[str, str] = field(default_factory=dict)
    context: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def slot(self, slot_id: str) -> str:
        """A slot's name ("Hero banner"), else its id."""
        return self.slots.get(slot_id) or str(slot_id)

    def action(self, action_id: str) -> str:
        """An action's name ("Xbox Series X"), else its id."""
        return self.actions.get(action_id) or str(action_id)

    def field(self, name: str) -> str:
        """A context field's label ("Time of day"), else the name capitalized."""
        return self.context.get(name) or humanize(name)

    def value(self, name: str, value: str) -> str:
        """A context value's name, else the value itself."""
        return (self.values.get(name) or {}).get(value) or str(value)

    def context_line(self, context: Mapping[str, str]) -> str:
        """A visitor's context in words: ``Time of day: Morning · Device: Mobile``."""
        return " · ".join(f"{self.field(k)}: {self.value(k, v)}" for k, v in context.items())


def problems(display: Any) -> list[str]:
    """Why a ``display`` block cannot be used (empty when it can)."""
    if not isinstance(display, Mapping):
        return ["'display' must be an object with any of slots, actions, context, values"]
    out = [f"display has an unknown part {k!r} (known: {', '.join(_PARTS)})" for k in display if k not in _PARTS]
    for part in ("slots", "actions", "context"):
        names = display.get(part, {})
        if not isinstance(names, Mapping) or not all(isinstance(v, str) for v in names.values()):
            out.append(f"display.{part} must map ids to names (strings)")
    values = display.get("values", {})
    if not isinstance(values, Mapping) or not all(
            isinstance(v, Mapping) and all(isinstance(x, str) for x in v.values()) for v in values.values()):
        out.append("display.values must map each context field to {value: name}")
    return out


def labels_from(display: Mapping[str, Any] | None) -> Labels:
    """Labels from a (checked) ``display`` block; empty labels for None."""
    if not display:
        return Labels()
    return Labels(slots=dict(display.get("slots", {})), actions=dict(display.get("actions", {})),
                  context=dict(display.get("context", {})),
                  values={k: dict(v) for k, v in display.get("values", {}).items()})


def builtin_labels(name: str) -> Labels:
    """The display names of a built-in scenario (empty when it has none)."""
    try:
        table = json.loads(_BUILTIN.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return Labels()
    return labels_from(table.get(name))
