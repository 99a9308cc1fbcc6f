"""What drives the choices, in words and one chart (plain Python and altair, no Streamlit).

- "Why this action?": a slot's explanation (``engine.explain_event`` /
  ``client.explain_event``; see ``personalizer.vw.explain``) as short lines such as
  ``Evening × Electronics: +0.31``, with the scenario's display names.
- Feature importances (``personalizer.importance``): the scores split by context,
  action and slot features as a bar chart, and guidance a product owner can act on
  ("``weather`` scores near zero: it may be noise; consider dropping it").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import altair as alt
import pandas as pd

from .labels import Labels
from .text import humanize

#: A feature whose normalized score is below this share of an even split is "near zero".
NEAR_ZERO_SHARE = 0.1
#: The words for each namespace of the feature-importance contract.
ROLES = {"context": "Visitor context", "action": "Action", "slot": "Slot"}
ROLE_COLORS = {"Visitor context": "#2563eb", "Action": "#f59e0b", "Slot": "#10b981"}
ID_FEATURE = "_id"


def feature_name(namespace: str, name: str, labels: Labels) -> str:
    """A feature in words: ``Time of day`` for context ``time``, ``Action id`` for the encoder's ids."""
    if name == ID_FEATURE:
        return {"action": "Action id", "slot": "Slot id"}.get(namespace, "Id")
    return labels.field(name) if namespace == "context" else humanize(name)


def _value_words(feature: Mapping[str, Any], labels: Labels) -> str:
    """One feature of a reason in words: the value a person knows (``Evening``, ``Xbox Series X``, ``on sale``)."""
    namespace, name, value = feature.get("namespace"), str(feature.get("featureName")), feature.get("value")
    if name == ID_FEATURE:
        return labels.action(str(value)) if namespace == "action" else labels.slot(str(value))
    if namespace == "context":
        return labels.value(name, str(value))
    text = str(value).lower()
    if text in ("true", "false"):
        return ("" if text == "true" else "not ") + humanize(name).lower()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{humanize(name).lower()} {value:g}"
    return str(value)


@dataclass(frozen=True)
class WhyLines:
    """A slot's "why" in words: ``lines`` to show, or a ``note`` instead (explored, unavailable)."""

    lines: list[str]
    note: str = ""
    explored: bool = False


def why_lines(explanation: Mapping[str, Any] | None, labels: Labels) -> WhyLines:
    """``evening × Electronics: +0.31`` lines for a slot's explanation, strongest first, and the rest."""
    if not explanation:
        return WhyLines([], "No explanation for this slot.")
    if explanation.get("explored"):
        favourite = (explanation.get("favourite") or {}).get("actionId")
        fav = f" The model prefers {labels.action(str(favourite))} here." if favourite else ""
        return WhyLines([], f"Shown to keep learning, not the model's favourite.{fav}", explored=True)
    if not explanation.get("available"):
        return WhyLines([], str(explanation.get("reason") or "Not available for this slot."))
    lines = []
    for reason in explanation.get("reasons") or []:
        words = " × ".join(_value_words(f, labels) for f in reason.get("features") or [])
        lines.append(f"{words}: {float(reason.get('contribution', 0.0)):+.2f}")
    rest = explanation.get("rest")
    if rest is not None and len(explanation.get("text") or []) > len(lines):
        lines.append(f"everything else: {float(rest):+.2f}")
    runner = (explanation.get("runnerUp") or {}).get("actionId")
    note = (f"Score over the runner-up, {labels.action(str(runner))}: {float(explanation.get('margin', 0.0)):+.2f}"
            if runner else "")
    return WhyLines(lines, note)


# ---------------------------------------------------------------- feature importances

def score_frame(scores: Sequence[Mapping[str, Any]], labels: Labels) -> pd.DataFrame:
    """The contract's ``featureScores`` as rows for the chart: feature, kind, score, drop and its interval."""
    rows = []
    for s in scores:
        interval = s.get("rewardDropInterval") or [None, None]
        rows.append({"feature": feature_name(str(s.get("namespace")), str(s.get("featureName")), labels),
                     "name": str(s.get("featureName")), "kind": ROLES.get(str(s.get("namespace")),
                                                                           str(s.get("namespace"))),
                     "score": float(s.get("score") or 0.0), "drop": s.get("rewardDrop"),
                     "low": interval[0], "high": interval[1]})
    return pd.DataFrame(rows, columns=["feature", "name", "kind", "score", "drop", "low", "high"])


def importance_chart(frame: pd.DataFrame) -> alt.Chart:
    """Horizontal bars, most important first, colored (and faceted in the legend) by context / action / slot."""
    kinds = [k for k in ROLE_COLORS if k in set(frame["kind"])]
    order = frame.sort_values("score", ascending=False)["feature"].tolist()
    return alt.Chart(frame).mark_bar(cornerRadiusEnd=3).encode(
        y=alt.Y("feature:N", sort=order, title=None, axis=alt.Axis(labelLimit=160, labelFontSize=12)),
        x=alt.X("score:Q", title="Share of the reward lost without the feature",
                axis=alt.Axis(format="%", tickCount=5), scale=alt.Scale(domain=[0, max(0.05, float(
                    frame["score"].max() if len(frame) else 0.0))])),
        color=alt.Color("kind:N", title=None, scale=alt.Scale(domain=kinds, range=[ROLE_COLORS[k] for k in kinds]),
                        legend=alt.Legend(orient="bottom", direction="horizontal")),
        tooltip=[alt.Tooltip("feature:N", title="Feature"), alt.Tooltip("kind:N", title="Kind"),
                 alt.Tooltip("score:Q", title="Score", format=".1%"),
                 alt.Tooltip("drop:Q", title="Reward lost per visitor without it", format="+.3f"),
                 alt.Tooltip("low:Q", title="95% interval from", format="+.3f"),
                 alt.Tooltip("high:Q", title="95% interval to", format="+.3f")],
    ).properties(height=110 + 30 * max(1, len(frame)))  # axis title and legend share this height


def guidance(frame: pd.DataFrame) -> list[str]:
    """Plain-language advice from the scores (Markdown; feature names in backticks)."""
    if frame.empty:
        return []
    if float(frame["score"].sum()) <= 0:
        return ["No feature's removal cost any reward in this range: the model is not yet using what it is "
                "given, or the range is too short. Try a longer range or more visitors."]
    out = []
    ranked = frame.sort_values("score", ascending=False)
    top = ranked.iloc[0]
    out.append(f"**`{top['name']}`** matters most ({top['score']:.0%} of the reward the features earn): "
               "keep it accurate and always send it.")
    even = 1.0 / len(frame)
    quiet = []
    for _, row in ranked.iterrows():
        if row["name"] == ID_FEATURE or row["name"] in quiet:
            continue
        noise = row["score"] < NEAR_ZERO_SHARE * even
        uncertain = not (pd.notna(row["low"]) and pd.notna(row["high"])) or row["low"] <= 0 <= row["high"]
        if noise and uncertain:
            quiet.append(str(row["name"]))
    if len(quiet) == 1:
        out.append(f"`{quiet[0]}` scores near zero: it may be noise; consider dropping it "
                   "(or check that it is filled in).")
    elif quiet:
        names = ", ".join(f"`{q}`" for q in quiet[:-1]) + f" and `{quiet[-1]}`"
        out.append(f"{names} score near zero: they may be noise; consider dropping them "
                   "(or check that they are filled in).")
    if (frame["name"] == ID_FEATURE).any():
        out.append("Action id: what the model learned about each action by itself. Features that repeat each "
                   "other (an id and a category that never changes for it) share no credit.")
    return out
