"""Safe text and number formatting for the dashboard.

Action ids, feature names and values come from user-editable scenarios. Every
such string that reaches a Streamlit element that renders Markdown goes through
:func:`md`, which backslash-escapes all ASCII punctuation: CommonMark then shows
it literally, so ``<img src=x onerror=alert(1)>`` or ``[x](javascript:..)`` is
text, never markup (and Streamlit's ``:color[...]`` / ``$latex$`` directives
stay inert too).
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Iterable, Mapping
from typing import Any

_MD_ESCAPES = {ord(c): "\\" + c for c in string.punctuation}


def md(text: Any) -> str:
    """``text`` as a Markdown literal: every ASCII punctuation character escaped, newlines as spaces."""
    return " ".join(str(text).split("\n")).translate(_MD_ESCAPES)


def md_block(text: Any) -> str:
    """Multi-line text as a Markdown literal: each line escaped, line breaks kept."""
    return "  \n".join(str(line).translate(_MD_ESCAPES) for line in str(text).splitlines())


def flatten_features(features: Iterable[Mapping[str, Any]] | None) -> dict[str, Any]:
    """Merge a Personalizer feature list into one ``name -> value`` dict; nested objects become ``ns.name``."""
    out: dict[str, Any] = {}

    def walk(obj: Mapping[str, Any], prefix: str) -> None:
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping):
                walk(value, name + ".")
            else:
                out[name] = value

    for obj in features or []:
        if isinstance(obj, Mapping):
            walk(obj, "")
    return out


def feature_value(value: Any) -> str:
    """A feature value as short display text (JSON for lists, ``true``/``false`` for booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def describe_features(features: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    """``name: value · name: value`` for a flattened feature dict (plain text, not escaped)."""
    skipped = {s.lower() for s in skip}
    return " · ".join(f"{k}: {feature_value(v)}" for k, v in features.items() if k.lower() not in skipped)


def lookup(features: Mapping[str, Any], name: str) -> Any:
    """A feature by case-insensitive name (``price``, ``Price``); None when absent."""
    wanted = name.lower()
    for key, value in features.items():
        if key.lower() == wanted:
            return value
    return None


def as_number(value: Any) -> float | None:
    """A finite number from a feature value (``20``, ``"19.99"``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip().lstrip("$€£"))
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def currency(value: Any, symbol: str = "$") -> str | None:
    """A price as currency (``$1,234.50``), or None when the value is not a number."""
    number = as_number(value)
    if number is None:
        return None
    sign = "-" if number < 0 else ""
    return f"{sign}{symbol}{abs(number):,.2f}"


def is_true(value: Any) -> bool:
    """Feature truthiness as catalogs write it: ``true``, ``"true"``, ``"yes"``, ``1``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in {"true", "yes", "1", "y"}


def percent(value: float | None, digits: int = 0) -> str:
    """``0.823`` -> ``82%``; None or NaN -> an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value * 100:.{digits}f}%"


def context_label(context: Mapping[str, str]) -> str:
    """A context as one line: ``time=morning, device=mobile``."""
    return ", ".join(f"{k}={v}" for k, v in context.items())
