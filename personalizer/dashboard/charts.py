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
        x=alt.X("slot:N", sort=order, title=None, axis=alt.Axis(labelAngle=0, labelLimit=240)),
    )
    tooltip = [
        alt.Tooltip("slot:N", title="Slot"),
        alt.Tooltip("rate:Q", title="Accept rate", format=".1%"),
        alt.Tooltip("accepted:Q", title="Accepted", format=","),
        alt.Tooltip("rejected:Q", title="Rejected", format=","),
        alt.Tooltip("rewarded:Q", title="Rewarded", format=","),
    ]
    bars = base.mark_bar(cornerRadiusTopLeft=4, cornerRadiusTopRight=4, size=56, color=LEARNER_COLOR).encode(
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


def learning_curve(curves: pd.DataFrame, window: int) -> alt.Chart:
    """Rolling accept rate of one slot, with the oracle's and the baseline's expected rates as references."""
    present = [s for s in (SERIES_LEARNER, SERIES_ORACLE, SERIES_BASELINE) if s in set(curves["series"])]
    colors = {SERIES_LEARNER: LEARNER_COLOR, SERIES_ORACLE: ORACLE_COLOR, SERIES_BASELINE: BASELINE_COLOR}
    dashes = {SERIES_LEARNER: [1, 0], SERIES_ORACLE: [6, 4], SERIES_BASELINE: [2, 3]}
    return alt.Chart(curves).mark_line(strokeWidth=2.2, interpolate="monotone").encode(
        x=alt.X("n:Q", title=f"Rewarded visitors (rolling window {window})", axis=alt.Axis(format=",d"),
                scale=alt.Scale(nice=False, zero=True)),
        y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1]), axis=_percent_axis("Accept rate")),
        color=alt.Color("series:N", sort=present,
                        scale=alt.Scale(domain=present, range=[colors[s] for s in present]),
                        legend=alt.Legend(title=None, orient="bottom", labelLimit=260)),
        strokeDash=alt.StrokeDash("series:N", sort=present,
                                  scale=alt.Scale(domain=present, range=[dashes[s] for s in present]),
                                  legend=None),
        tooltip=[alt.Tooltip("series:N", title="Series"), alt.Tooltip("n:Q", title="Visitor", format=","),
                 alt.Tooltip("value:Q", title="Rate", format=".1%")],
    ).properties(height=280)


def action_mix_chart(mix: pd.DataFrame, slot_order: list[str] | None = None) -> alt.Chart:
    """Stacked bars: which actions each slot showed, as shares, with counts and accept rates in tooltips."""
    order = slot_order or mix["slot"].drop_duplicates().tolist()
    return alt.Chart(mix).mark_bar(size=56).encode(
        x=alt.X("slot:N", sort=order, title=None, axis=alt.Axis(labelAngle=0, labelLimit=240)),
        y=alt.Y("share:Q", stack="normalize", axis=_percent_axis("Share of visitors shown")),
        color=alt.Color("action:N", title="Action", scale=alt.Scale(scheme="tableau10"),
                        legend=alt.Legend(orient="right", labelLimit=220)),
        order=alt.Order("action:N"),
        tooltip=[
            alt.Tooltip("slot:N", title="Slot"),
            alt.Tooltip("action:N", title="Action"),
            alt.Tooltip("shown:Q", title="Shown", format=","),
            alt.Tooltip("share:Q", title="Share", format=".1%"),
            alt.Tooltip("accepted:Q", title="Accepted", format=","),
            alt.Tooltip("rate:Q", title="Accept rate", format=".1%"),
        ],
    ).properties(height=260)


def policy_estimates(frame: pd.DataFrame, colors: dict[str, str], online_kind: str | None = None) -> alt.LayerChart:
    """Each policy's estimated accept rate as a dot on its 95 % interval, one row per policy (table order).

    ``frame`` is :func:`.offline.result_frame`'s; ``colors`` maps its ``kind`` values to colors.
    A dashed line marks the row of kind ``online_kind`` (what was served). The axis
    starts at zero so differences are not exaggerated.
    """
    data = frame.assign(label=[f"{e:.1%}" + (" · best" if b else "") if e == e else "—"
                               for e, b in zip(frame["estimate"], frame["best"], strict=True)])
    order = data["policy"].tolist()
    kinds = [k for k in colors if k in set(data["kind"])]
    top = float(pd.concat([data["high"], data["estimate"]]).max(skipna=True) or 1.0)
    domain = [0.0, min(1.0, top + 0.12) if top == top else 1.0]
    base = alt.Chart(data).encode(
        y=alt.Y("policy:N", sort=order, title=None, axis=alt.Axis(labelLimit=260, labelFontSize=13)),
    )
    color = alt.Color("kind:N", scale=alt.Scale(domain=kinds, range=[colors[k] for k in kinds]),
                      legend=alt.Legend(title=None, orient="bottom", labelFontSize=12))
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
    return alt.layer(*layers).properties(height=100 + 36 * len(data))  # fit: axis and legend included
