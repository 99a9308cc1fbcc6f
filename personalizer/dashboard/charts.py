"""Altair charts for the trends page, built from :mod:`.trends` frames.

Charts get small, pre-aggregated frames (a row per slot, per slot and action, or
a few hundred curve points), so the Vega-Lite spec stays light however long the
history is. Action ids reach Vega only as data, which it draws as text.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from .trends import SERIES_BASELINE, SERIES_LEARNER, SERIES_ORACLE

LEARNER_COLOR = "#2563eb"
ORACLE_COLOR = "#16a34a"
BASELINE_COLOR = "#9ca3af"


def _percent_axis(title: str) -> alt.Axis:
    return alt.Axis(format="%", title=title, grid=True, tickCount=5)


def accept_rate_bars(rates: pd.DataFrame, slot_order: list[str] | None = None) -> alt.LayerChart:
    """Per-slot accept rate bars with counts in the tooltip; the oracle's expected rate as a tick when known."""
    order = slot_order or rates["slot"].tolist()
    base = alt.Chart(rates).encode(
        x=alt.X("slot:N", sort=order, title=None, axis=alt.Axis(labelAngle=0, labelLimit=110,
                                                                labelExpr="split(datum.label, ' ')")),
    )
    tooltip = [
        alt.Tooltip("slot:N", title="Slot"),
        alt.Tooltip("rate:Q", title="Accept rate", format=".1%"),
        alt.Tooltip("accepted:Q", title="Accepted", format=","),
        alt.Tooltip("rejected:Q", title="Rejected", format=","),
        alt.Tooltip("rewarded:Q", title="Rewarded", format=","),
    ]
    bars = base.mark_bar(cornerRadiusTopLeft=4, cornerRadiusTopRight=4, color=LEARNER_COLOR).encode(
        y=alt.Y("rate:Q", scale=alt.Scale(domain=[0, 1]), axis=_percent_axis("Accept rate")),
        tooltip=tooltip,
    )
    labels = base.mark_text(dy=-8, fontSize=13, fontWeight="bold").encode(
        y="rate:Q", text=alt.Text("rate:Q", format=".0%"),
    )
    layers: list[alt.Chart] = [bars, labels]
    if rates["oracle"].notna().any():
        layers.append(base.mark_tick(color=ORACLE_COLOR, thickness=3, size=72).encode(
            y="oracle:Q",
            tooltip=[alt.Tooltip("slot:N", title="Slot"),
                     alt.Tooltip("oracle:Q", title="Oracle's expected accept rate", format=".1%")],
        ))
    return alt.layer(*layers).properties(height=260)


MARKER_COLOR = "#7c3aed"
OTHER_COLOR = "#d1d5db"


def _count_axis(title: str) -> alt.Axis:
    """An axis of counts: whole numbers only (no "0 0 0 1 1" ticks on a short history)."""
    return alt.Axis(format=",d", tickMinStep=1, title=title)


def learning_curve(curves: pd.DataFrame, window: int, marks: pd.DataFrame | None = None) -> alt.LayerChart:
    """Rolling accept rate of one slot, with the oracle's and the baseline's expected rates as references.

    ``marks`` (``n``, ``label``) draws a labelled vertical rule where something changed
    (a reset, a policy, a scenario switch, a simulated drift). A short curve shows its
    points, so a single answer is a visible dot rather than an empty grid.
    """
    present = [s for s in (SERIES_LEARNER, SERIES_ORACLE, SERIES_BASELINE) if s in set(curves["series"])]
    colors = {SERIES_LEARNER: LEARNER_COLOR, SERIES_ORACLE: ORACLE_COLOR, SERIES_BASELINE: BASELINE_COLOR}
    dashes = {SERIES_LEARNER: [1, 0], SERIES_ORACLE: [6, 4], SERIES_BASELINE: [2, 3]}
    last = int(curves["n"].max()) if len(curves) else 1
    x_scale = alt.Scale(domain=[0, max(last, 2)], nice=False, zero=True)
    line = alt.Chart(curves).mark_line(strokeWidth=2.2, interpolate="monotone", point=last <= 30).encode(
        x=alt.X("n:Q", title=f"Answered visitors (rolling window {window})", axis=_count_axis(
            f"Answered visitors (rolling window {window})"), scale=x_scale),
        y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1]), axis=_percent_axis("Accept rate")),
        color=alt.Color("series:N", sort=present,
                        scale=alt.Scale(domain=present, range=[colors[s] for s in present]),
                        legend=alt.Legend(title=None, orient="bottom", direction="vertical", labelLimit=300)),
        strokeDash=alt.StrokeDash("series:N", sort=present,
                                  scale=alt.Scale(domain=present, range=[dashes[s] for s in present]),
                                  legend=None),
        tooltip=[alt.Tooltip("series:N", title="Series"), alt.Tooltip("n:Q", title="Visitor", format=","),
                 alt.Tooltip("value:Q", title="Rate", format=".1%")],
    )
    layers: list[alt.Chart] = [line]
    if marks is not None and len(marks):
        rules = alt.Chart(marks).encode(x=alt.X("n:Q", scale=x_scale))
        layers.append(rules.mark_rule(color=MARKER_COLOR, strokeDash=[3, 3], strokeWidth=1.5).encode(
            tooltip=[alt.Tooltip("label:N", title="Change"), alt.Tooltip("n:Q", title="From visitor", format=",")]))
        layers.append(rules.mark_text(align="left", baseline="top", dx=4, y=4, angle=0, fontSize=11,
                                      color=MARKER_COLOR, limit=160).encode(text="label:N"))
    return alt.layer(*layers).properties(height=280)


def action_mix_chart(mix: pd.DataFrame, slot_order: list[str] | None = None, other: str | None = None) -> alt.Chart:
    """Stacked bars: which actions each slot showed, as shares, with counts and accept rates in tooltips.

    One bar per slot however many (labels wrap below the bars, the legend sits under
    the chart in columns, so nothing is cut at 390 px); ``other`` is the folded
    long tail's name, drawn in grey.
    """
    order = slot_order or mix["slot"].drop_duplicates().tolist()
    actions = [a for a in mix.sort_values("shown", ascending=False)["action"].drop_duplicates() if a != other]
    palette = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#ec4899", "#84cc16",
               "#64748b", "#a16207"]
    domain = actions + ([other] if other is not None and other in set(mix["action"]) else [])
    colors = [palette[i % len(palette)] for i in range(len(actions))] + [OTHER_COLOR] * (len(domain) - len(actions))
    return alt.Chart(mix).mark_bar().encode(
        x=alt.X("slot:N", sort=order, title=None, axis=alt.Axis(labelAngle=0, labelLimit=110, labelFontSize=11,
                                                                labelExpr="split(datum.label, ' ')")),
        y=alt.Y("share:Q", stack="normalize", axis=_percent_axis("Share of visitors shown")),
        color=alt.Color("action:N", title=None, scale=alt.Scale(domain=domain, range=colors),
                        legend=alt.Legend(orient="bottom", columns=2, labelLimit=170, symbolType="square")),
        order=alt.Order("share:Q", sort="descending"),
        tooltip=[
            alt.Tooltip("slot:N", title="Slot"),
            alt.Tooltip("action:N", title="Action"),
            alt.Tooltip("shown:Q", title="Shown", format=","),
            alt.Tooltip("share:Q", title="Share", format=".1%"),
            alt.Tooltip("accepted:Q", title="Accepted", format=","),
            alt.Tooltip("rate:Q", title="Accept rate", format=".1%"),
        ],
    ).properties(height=340)  # the legend under the bars shares this height


def policy_estimates(frame: pd.DataFrame, colors: dict[str, str], online_kind: str | None = None) -> alt.LayerChart:
    """Each policy's estimated accept rate as a dot on its 95 % interval, one row per policy (table order).

    ``frame`` is :func:`.offline.result_frame`'s; ``colors`` maps its ``kind`` values to colors.
    A dashed line marks the row of kind ``online_kind`` (what was served). The axis
    starts at zero so differences are not exaggerated.
    """
    # "best" rides on the row's name, not on the value label: a label right of the interval has
    # room for a number only when a phone's plot is 130 px wide.
    data = frame.assign(label=[f"{e:.1%}" if e == e else "—" for e in frame["estimate"]],
                        row=[f"{p} · best" if b else p for p, b in zip(frame["policy"], frame["best"], strict=True)])
    order = data["row"].tolist()
    kinds = [k for k in colors if k in set(data["kind"])]
    top = float(pd.concat([data["high"], data["estimate"]]).max(skipna=True) or 1.0)
    domain = [0.0, min(1.0, top + 0.12) if top == top else 1.0]
    base = alt.Chart(data).encode(
        y=alt.Y("row:N", sort=order, title=None, axis=alt.Axis(labelLimit=260, labelFontSize=13)),
    )
    color = alt.Color("kind:N", scale=alt.Scale(domain=kinds, range=[colors[k] for k in kinds]),
                      legend=alt.Legend(title=None, orient="bottom", labelFontSize=12, columns=2))
    tooltip = [
        alt.Tooltip("policy:N", title="Policy"),
        alt.Tooltip("kind:N", title="Kind"),
        alt.Tooltip("estimate:Q", title="Estimated accept rate", format=".1%"),
        alt.Tooltip("low:Q", title="95% interval from", format=".1%"),
        alt.Tooltip("high:Q", title="95% interval to", format=".1%"),
        alt.Tooltip("vsOnline:Q", title="vs online (points)", format="+.1f"),
    ]
    x = alt.X("low:Q", scale=alt.Scale(domain=domain, nice=False),
              axis=_percent_axis("Estimated accept rate, 95% interval"))
    intervals = base.mark_rule(strokeWidth=3, opacity=0.55).encode(x=x, x2="high:Q", color=color,
                                                                    tooltip=tooltip)
    dots = base.mark_point(filled=True, size=150, opacity=1).encode(x="estimate:Q", color=color, tooltip=tooltip)
    labels = base.mark_text(align="left", dx=10, fontSize=12, fontWeight="bold").encode(
        x="high:Q", text="label:N", color=color)
    layers: list[alt.Chart] = [intervals, dots, labels]
    online = data.loc[data["kind"] == online_kind, "estimate"]
    if online_kind and len(online) and online.iloc[0] == online.iloc[0]:
        # What was served, as a reference line through every row.
        layers.insert(0, alt.Chart(pd.DataFrame({"online": [float(online.iloc[0])]})).mark_rule(
            strokeDash=[4, 4], color=colors.get(online_kind, "#2563eb"), opacity=0.6).encode(x="online:Q"))
    return alt.layer(*layers).properties(height=120 + 36 * len(data))  # fit: axis and two legend rows included
