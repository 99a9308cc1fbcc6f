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


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 event``, ``2 events``, ``1,204 visitors``: a count with the noun in the right number."""
    noun = singular if count == 1 else (plural_form or singular + "s")
    return f"{count:,} {noun}"


def humanize(name: str) -> str:
    """A field name as a label when the scenario gives none: ``time`` -> ``Time``, ``userAge`` -> ``User age``."""
    spaced = "".join(f" {c.lower()}" if c.isupper() and i and not name[i - 1].isupper() else c
                     for i, c in enumerate(str(name))).replace("_", " ").strip()
    return spaced[:1].upper() + spaced[1:] if spaced else str(name)


#: What a Personalizer error code means, in one sentence a product owner can act on.
ERROR_EXPLANATIONS = {
    "MissingEndpoint": "No endpoint URL is set yet: enter the server's address in the sidebar.",
    "InvalidEndpoint": "The endpoint is not a web address: it must start with http:// or https://.",
    "ServiceUnreachable": "The server did not answer: check that it runs and that the address is right.",
    "Unauthorized": "The server refused the key: paste the right subscription key in the sidebar.",
    "PermissionDenied": "The server refused the key: paste the right subscription key in the sidebar.",
    "ServiceUnavailable": "The service is busy or starting: try again in a moment.",
    "TooManyRequests": "The service asked to slow down: try again in a moment.",
    "InternalServerError": "The service failed on its side: its log says more.",
    "InvalidRankResponse": "The service answered something that is not a valid rank answer.",
    "InvalidPolicyConfiguration": "Vowpal Wabbit does not accept these learning settings.",
    "InvalidServiceConfiguration": "The service does not accept this setting.",
    "EventNotFound": "The service does not know this visitor (any more).",
    "ResourceNotFound": "The service does not offer this call.",
    "Conflict": "The service already closed this visitor, so the answer came too late.",
    "RequestTimeout": "The server took too long to answer: it may be overloaded.",
    "InvalidResponse": "The address answered, but not like a Personalizer service: check the endpoint URL.",
    "BadRequest": "The service refused the request as malformed.",
    "InvalidRankRequest": "The catalog is not a valid rank request for this service.",
    "InvalidRewardRequest": "The service refused the reward.",
    "InvalidEventIdToActivate": "The service cannot activate this visitor.",
    "OperationNotAllowed": "The service does not allow this now.",
    "PayloadSizeExceeded": "The request is larger than the service accepts.",
}


def explain_error(code: str | None) -> str | None:
    """The sentence for a Personalizer error code, or None when there is none."""
    return ERROR_EXPLANATIONS.get(code or "")
