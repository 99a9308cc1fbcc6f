"""A report to share: one self-contained HTML file with the numbers and the charts (no Streamlit).

The charts are embedded as their Vega-Lite specs (data inlined) and drawn by
vega-embed, whose JavaScript (with Vega and Vega-Lite) is inlined too, bundled by
``vl-convert-python`` from the copies it ships. So the file opens offline, from a
disk or a mail attachment, with nothing fetched at view time. Without the bundle
(vl-convert missing) each chart is inlined as an SVG drawing instead, and when that
is impossible too, the specs stay in the file and the report says charts need it.
"""

from __future__ import annotations

import functools
import html
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

#: The element id prefix of each chart's spec (``<script type="application/json" id="spec-0">``).
SPEC_ID = "spec-"
#: Vega-Lite major.minor of altair's specs, for the bundle.
_VL_VERSION = "6.1"
#: What vl-convert raises: ValueError for a spec it cannot convert, RuntimeError for a bundle it cannot build.
_VL_CONVERT_ERRORS = (ValueError, RuntimeError)


@functools.lru_cache(maxsize=1)
def vega_bundle() -> str | None:
    """vega-embed + Vega + Vega-Lite as one script defining ``window.vegaEmbed`` (None without vl-convert).

    Bundling takes about a second: done once per process.
    """
    try:
        import vl_convert
    except ImportError:
        return None
    try:
        return str(vl_convert.javascript_bundle(snippet="window.vegaEmbed = vegaEmbed;", vl_version=_VL_VERSION))
    except _VL_CONVERT_ERRORS:  # an unknown Vega-Lite version in a newer vl-convert: its default bundle
        log.warning("vl-convert could not bundle Vega-Lite %s", _VL_VERSION, exc_info=True)
        try:
            return str(vl_convert.javascript_bundle(snippet="window.vegaEmbed = vegaEmbed;"))
        except _VL_CONVERT_ERRORS:
            log.warning("vl-convert could not bundle vega-embed", exc_info=True)
            return None


def _svg(spec: dict[str, Any]) -> str | None:
    try:
        import vl_convert
    except ImportError:
        return None
    try:
        return str(vl_convert.vegalite_to_svg(spec))
    except _VL_CONVERT_ERRORS:
        log.warning("vl-convert could not draw a chart", exc_info=True)
        return None


@dataclass
class Report:
    """What a report says: a title, what the numbers cover, the policy, the time range, numbers and charts."""

    title: str
    scope: str
    policy: str
    time_range: tuple[datetime, datetime] | None
    numbers: list[tuple[str, str]] = field(default_factory=list)   # (label, value in words)
    notes: list[str] = field(default_factory=list)
    charts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (title, Vega-Lite spec)
    created: datetime = field(default_factory=lambda: datetime.now(UTC))


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element (no ``</script>`` or ``<!--`` can close or open anything)."""
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026")


def _when(value: datetime) -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2937;background:#f8fafc}
main{max-width:1100px;margin:0 auto;padding:24px 16px 48px}
h1{font-size:1.6rem;margin:0 0 4px}h2{font-size:1.15rem;margin:28px 0 8px}
.meta{color:#4b5563;font-size:.92rem;margin:2px 0}
.numbers{display:flex;flex-wrap:wrap;gap:12px;margin-top:16px}
.number{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:10px 14px;min-width:150px;flex:1 1 150px}
.number .label{font-size:.85rem;color:#4b5563}.number .value{font-size:1.3rem;font-weight:600;margin-top:2px}
.chart{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:12px;margin:8px 0 16px;overflow-x:auto}
.chart.vega-embed{display:block;width:100%;box-sizing:border-box}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,460px),1fr));gap:0 20px}
.note{color:#4b5563;font-size:.88rem}
footer{margin-top:32px;color:#6b7280;font-size:.8rem}
"""


def render(report: Report, bundle: str | None = None, *, use_bundle: bool = True) -> str:
    """The report as one HTML document (``bundle``: the vega-embed script; default :func:`vega_bundle`)."""
    script = (bundle if bundle is not None else vega_bundle()) if use_bundle else None
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(report.title)}</title><style>{_STYLE}</style></head><body><main>",
             f"<h1>{e(report.title)}</h1>", f'<p class="meta">{e(report.scope)}</p>']
    if report.time_range is not None:
        lo, hi = report.time_range
        parts.append(f'<p class="meta"><strong>Time range:</strong> {e(_when(lo))} to {e(_when(hi))}</p>')
    parts.append(f'<p class="meta"><strong>Policy:</strong> {e(report.policy or "not told by the backend")}</p>')
    if report.numbers:
        parts.append('<section class="numbers">')
        parts += [f'<div class="number"><div class="label">{e(label)}</div><div class="value">{e(value)}</div></div>'
                  for label, value in report.numbers]
        parts.append("</section>")
    parts += [f'<p class="note">{e(note)}</p>' for note in report.notes]
    parts.append('<section class="charts">')
    for i, (title, spec) in enumerate(report.charts):
        parts.append(f"<div><h2>{e(title)}</h2>")
        fallback = "" if script is not None else (_svg(spec) or
                                                  "<p class=\"note\">This chart needs vl-convert-python to be "
                                                  "drawn; its Vega-Lite spec is in this file.</p>")
        parts.append(f'<div class="chart" id="chart-{i}">{fallback}</div>')
        # The chart fills the report's width, as it filled the dashboard's column.
        drawn = {**spec, "width": "container", "autosize": {"type": "fit-x", "contains": "padding"}} \
            if script is not None else spec
        parts.append(f'<script type="application/json" id="{SPEC_ID}{i}">{_script_json(drawn)}</script></div>')
    parts.append("</section>")
    parts.append(f"<footer>Personalizer Studio report, made {e(_when(report.created))}. Charts: Vega-Lite "
                 "specs with their data, drawn in this file without any network.</footer></main>")
    if script is not None:
        safe = script.replace("</script", "<\\/script")  # the bundle's text must not close its element
        parts.append(f"<script>{safe}</script>")
        parts.append("<script>document.querySelectorAll('script[id^=\"" + SPEC_ID + "\"]').forEach(function(el){"
                     "var i=el.id.slice(" + str(len(SPEC_ID)) + ");"
                     "window.vegaEmbed('#chart-'+i, JSON.parse(el.textContent), {actions:false, renderer:'svg'})"
                     ".catch(function(err){document.getElementById('chart-'+i).textContent="
                     "'This chart could not be drawn: '+err;});});</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def specs(document: str) -> list[dict[str, Any]]:
    """The chart specs a rendered report carries (for tests and tools)."""
    from html.parser import HTMLParser

    found: list[dict[str, Any]] = []

    class _Parser(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self._in_spec = False
            self._text: list[str] = []

        def handle_starttag(self, tag: str, attrs: Sequence[tuple[str, str | None]]) -> None:
            a = dict(attrs)
            self._in_spec = tag == "script" and a.get("type") == "application/json" and \
                str(a.get("id", "")).startswith(SPEC_ID)
            self._text = []

        def handle_data(self, data: str) -> None:
            if self._in_spec:
                self._text.append(data)

        def handle_endtag(self, tag: str) -> None:
            if self._in_spec and tag == "script":
                found.append(json.loads("".join(self._text)))
            self._in_spec = False

    _Parser().feed(document)
    return found
