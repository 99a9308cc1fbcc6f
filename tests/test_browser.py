"""A real browser against ``streamlit run app.py``: headless Debian Chromium driven by Playwright.

The app runs as a subprocess on a free loopback port with its own data
directory; the test stops it. Screenshots land in ``test-artifacts/browser/``.
``STUDIO_SHOTS=docs/screenshots python -m pytest tests/test_browser.py -k one_experiment``
refreshes the README's wide (1440 px) and phone (390 px) screenshots.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("STUDIO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
EVIL = "<img src=x onerror=alert(1)>"
PHONE_USER_AGENT = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                    "Version/17.0 Mobile/15E148 Safari/604.1")

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_app(home: Path, log: Path, remote: tuple[str, str] | None = None) -> Iterator[str]:
    """``streamlit run app.py`` on a free loopback port; yields its URL and stops it afterwards.

    Zero configuration (the embedded engine, whatever endpoint the developer's shell points at), or with
    ``remote`` = (endpoint, key) as ``PERSONALIZER_ENDPOINT``/``PERSONALIZER_KEY``: every session starts there.
    """
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PERSONALIZER_ENDPOINT", "PERSONALIZER_KEY")}
    env["PERSONALIZER_HOME"] = str(home)
    if remote is not None:
        env["PERSONALIZER_ENDPOINT"], env["PERSONALIZER_KEY"] = remote
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none",
           # No secrets file at all (a developer's .streamlit/secrets.toml must not switch it to remote).
           "--secrets.files", str(home.parent / "no-secrets.toml")]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not start; see {log}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[object]:
    """A Chromium page (Debian's binary; Playwright downloads nothing)."""
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("the Python package playwright is missing (pip install -r requirements-dev.txt); "
                    "or deselect this test with -m 'not browser'")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (Playwright's own browser download "
                    "is not used); or deselect this test with -m 'not browser'")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def _choose(page, label: str, option: str) -> None:
    """Pick an option of a Streamlit selectbox by its label."""
    page.get_by_role("combobox", name=label, exact=True).click()
    choice = page.get_by_role("option", name=option, exact=True)
    try:
        choice.click(timeout=5_000)
    except Exception:  # a list opened off screen: type to filter, then take the match
        page.keyboard.type(option)
        page.keyboard.press("Enter")


def _button(page, key: str):
    return page.locator(f".st-key-{key} button:visible")


def _nav(page, name: str):
    """A page link of the sidebar menu."""
    return page.get_by_test_id("stSidebarNavItems").get_by_role("link", name=name)


def _metric(page, label: str) -> str:
    """The value of the metric with this exact label."""
    label_el = page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    return page.get_by_test_id("stMetric").filter(has=label_el).get_by_test_id("stMetricValue").inner_text()


def _event_id(page) -> str:
    text = page.get_by_text(re.compile(r"^eventId ")).inner_text()
    return text.removeprefix("eventId ").strip()


_IDLE = """() => !document.querySelector("[data-testid='stStatusWidget']")
    && !document.querySelector("[data-stale='true']")"""


def _settle(page) -> None:
    """Wait until Streamlit finished its run: no 'Running' widget and no stale element, twice in a row."""
    for _ in range(2):
        page.wait_for_timeout(200)
        page.wait_for_function(_IDLE, timeout=60_000)


def _shoot(page, name: str, height: int | None = None) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if height:
        page.set_viewport_size({"width": page.viewport_size["width"], "height": height})
        page.wait_for_timeout(800)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def _evil_scenario() -> bytes:
    data = json.loads((ROOT / "personalizer" / "scenarios" / "seed.json").read_text())
    old = data["actions"][0]["id"]
    text = json.dumps(data).replace(json.dumps(old), json.dumps(EVIL))
    data = json.loads(text)
    data["name"] = "evil"
    data.pop("drift", None)
    return json.dumps(data).encode()


def test_the_demo_end_to_end_in_chromium(tmp_path: Path) -> None:
    home = tmp_path / "home"
    dialogs: list[str] = []
    with streamlit_app(home, tmp_path / "streamlit.log") as url, browser_page() as page:
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # A deep link as the server's very first request still gets the app's sidebar and menu,
        # and so does a reload of it (no Streamlit internals patched: the page runs app.py).
        page.goto(f"{url}/reward_trends")
        page.get_by_text("No rewards yet").wait_for()
        page.get_by_role("heading", name="Backend").wait_for()
        _settle(page)
        assert _nav(page, "Simulator").count() == 1 and _nav(page, "app").count() == 0  # the app's menu
        assert page.get_by_role("heading", name="Reward trends").count() == 1  # drawn once
        _shoot(page, "01-trends-empty")
        page.reload()
        page.get_by_text("No rewards yet").wait_for()
        page.get_by_role("heading", name="Backend").wait_for()
        _settle(page)
        assert page.get_by_role("heading", name="Reward trends").count() == 1
        page.goto(f"{url}/evaluate")  # another deep link, typed into the address bar
        page.get_by_text("Not enough logged events yet").wait_for()
        assert _nav(page, "Evaluate").count() == 1

        # Load: a visitor is ranked, one card per slot.
        page.goto(url)
        _button(page, "accept-BigHeroPosition").wait_for()
        _settle(page)
        first = _event_id(page)
        assert page.get_by_text("Time of day: Morning · Device: Phone").count() == 1
        _shoot(page, "02-rank-first")

        # Change a selector: a new visitor for that context.
        _choose(page, "Time of day", "Evening")
        page.get_by_text("Time of day: Evening · Device: Phone").wait_for()
        _settle(page)
        second = _event_id(page)
        assert second != first

        # Accept one slot (a double click sends one reward) and reject the other.
        _button(page, "accept-BigHeroPosition").dblclick()
        page.get_by_text("Accepted · reward 1 sent").wait_for()
        _settle(page)
        assert _button(page, "accept-BigHeroPosition").is_disabled()
        assert _button(page, "reject-BigHeroPosition").is_disabled()
        assert _button(page, "accept-SmallSidebar").is_enabled()
        _button(page, "reject-SmallSidebar").click()
        page.get_by_text("Rejected · reward 0 sent").wait_for()
        page.get_by_text("All slots answered").wait_for()
        _settle(page)
        _shoot(page, "03-rank-answered")

        # Next visitor: the cards change and can be answered again.
        _button(page, "next-visitor").click()
        page.get_by_text("Waiting for answers").wait_for()
        _settle(page)
        assert _event_id(page) != second
        assert _button(page, "accept-BigHeroPosition").is_enabled()

        # The simulator: 200 visitors through the same engine.
        _nav(page, "Simulator").click()
        visitors = page.get_by_label("Visitors", exact=True)
        visitors.fill("200")
        visitors.press("Enter")
        _settle(page)
        _button(page, "sim-run").click()
        page.get_by_text(re.compile(r"Simulated 200 visitors")).wait_for(timeout=60_000)
        _settle(page)
        _shoot(page, "04-simulator")

        # The trends page draws its charts.
        _nav(page, "Reward trends").click()
        page.get_by_text("Accept rate per slot").wait_for()
        charts = page.locator("[data-testid='stVegaLiteChart']")
        charts.nth(3).wait_for()
        assert charts.count() == 4  # accept-rate bars, action mix, a learning curve per slot
        for i in range(4):
            drawn = charts.nth(i).locator("canvas, svg").first
            drawn.wait_for()
            box = drawn.bounding_box()
            assert box is not None and box["width"] > 100 and box["height"] > 100
        assert (_metric(page, "Visitors answered"), _metric(page, "Answers")) == ("201", "402")
        _settle(page)
        _shoot(page, "05-trends", height=2300)
        with page.expect_download() as download:
            _button(page, "download-history").click()
        csv = Path(download.value.path()).read_text().splitlines()
        assert csv[0].startswith("visitor,time,slot,action,reward,baseline,probability")
        assert len(csv) == 1 + 404  # 201 answered visitors and the one on screen x 2 slots

        # The Evaluate page: an offline evaluation of the log, drawn as estimates with intervals.
        page.set_viewport_size({"width": 1400, "height": 1000})
        _nav(page, "Evaluate").click()
        _button(page, "eval-run").click()
        page.get_by_role("heading", name="Results").wait_for(timeout=60_000)
        _settle(page)
        drawn = page.locator("[data-testid='stVegaLiteChart']").first.locator("canvas, svg").first
        drawn.wait_for()
        box = drawn.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 200
        assert page.get_by_text(re.compile(r"vs without personalization")).count() >= 1
        assert _button(page, "eval-apply").count() + page.get_by_text("nothing to apply").count() == 1
        _shoot(page, "07-evaluate", height=1700)

        # An uploaded scenario's ids show as text and run nothing.
        page.set_viewport_size({"width": 1400, "height": 1000})
        _nav(page, "Rank & reward").click()
        _choose(page, "Catalog and visitors", "Upload a scenario JSON…")
        page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(
            {"name": "evil.json", "mimeType": "application/json", "buffer": _evil_scenario()})
        page.get_by_text("Loaded evil").wait_for()
        _settle(page)
        for _ in range(8):  # rank until the evil action is on a card (it is allowed in both slots)
            if page.get_by_text(EVIL, exact=False).count():
                break
            _button(page, "next-visitor").click()
            _settle(page)
        assert page.get_by_text(EVIL, exact=False).count() >= 1  # shown literally
        assert page.locator("img[src='x']").count() == 0
        _shoot(page, "06-escaped-ids")
        assert not dialogs, dialogs
        assert not errors, errors

    # After the server stopped, the data directory holds exactly what was clicked.
    from personalizer.engine import LocalPersonalizer

    with LocalPersonalizer(home) as engine:
        stats = engine.stats()
        manual = [e for e in engine.events() if not e.event_id.startswith("sim-")]
    answered = [e for e in manual if e.activated is not None]
    assert len(answered) == 1 and answered[0].event_id == second and answered[0].labels == [1.0, 0.0]
    assert stats["rewards"] == 2 + 400 and stats["learned"] == 1 + 200


def _news_scenario() -> bytes:
    """A second catalog (three articles, two slots) with display names."""
    return json.dumps({
        "name": "news",
        "context": {"section": ["home", "sport"]},
        "actions": [{"id": f"article-{i}", "features": [{"topic": t}]} for i, t in enumerate("abc")],
        "slots": [{"id": "Lead", "features": [{"size": "large"}], "baselineAction": "article-0"},
                  {"id": "Second", "features": [{"size": "small"}], "baselineAction": "article-1"}],
        "preferences": {"type": "additive", "base": {"article-0": 0.2, "article-1": 0.3, "article-2": 0.6}},
        "display": {"slots": {"Lead": "Lead story", "Second": "Second story"},
                    "actions": {"article-0": "Budget vote", "article-1": "Weather", "article-2": "Match report"},
                    "context": {"section": "Site section"}},
    }).encode()


def _simulate(page, visitors: int) -> None:
    """On the simulator page: run ``visitors`` visitors and wait for the result."""
    field = page.get_by_label("Visitors", exact=True)
    field.fill(str(visitors))
    field.press("Enter")
    _settle(page)
    _button(page, "sim-run").click()
    page.get_by_text(re.compile(rf"Simulated {visitors:,} visitors")).wait_for(timeout=120_000)
    _settle(page)


def _tall(page, path: Path, height: int) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its own container, so grow the viewport."""
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": height})
    page.wait_for_timeout(800)
    _settle(page)
    page.screenshot(path=str(path))
    page.set_viewport_size(size)


def _sidebar_open(page) -> bool:
    """True when the sidebar is shown (on a phone it slides over the page)."""
    box = page.get_by_test_id("stSidebar").bounding_box()
    return box is not None and box["x"] + box["width"] > 10


def test_one_experiment_at_a_time_in_chromium(tmp_path: Path) -> None:
    """Embedded run, then a real remote server: trends show one experiment; a second catalog never mixes in;
    an applied policy is marked live; wide and phone screenshots of every page."""
    from server_fixtures import KEY, ProcessServer

    home = tmp_path / "home"
    shots = Path(os.environ.get("STUDIO_SHOTS") or ARTIFACTS)
    shots.mkdir(parents=True, exist_ok=True)
    with ProcessServer(tmp_path / "server-data", key=KEY) as server, \
            streamlit_app(home, tmp_path / "streamlit.log") as url, browser_page(1440, 900) as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # Embedded: 200 simulated visitors.
        page.goto(f"{url}/simulator")
        _simulate(page, 200)

        # Switch to the remote server (a real `python -m personalizer serve`), 120 visitors there.
        page.locator(".st-key-backend-kind").get_by_text("Remote", exact=True).click()
        _settle(page)
        endpoint = page.get_by_label("Endpoint URL", exact=True)
        endpoint.fill(server.base)
        endpoint.press("Enter")
        _settle(page)
        key = page.get_by_label("Subscription key", exact=True)
        key.fill(KEY)
        key.press("Enter")
        page.get_by_text("Key saved for this tab").wait_for()
        _settle(page)
        _simulate(page, 120)
        page.get_by_text("All slots: oracle exploring 20%").wait_for()
        _tall(page, shots / "wide-simulator.png", 1000)
        _nav(page, "Reward trends").click()
        page.get_by_text("Visitors answered").wait_for()
        _settle(page)
        assert _metric(page, "Visitors answered") == "120"  # the remote experiment only, not 320
        assert page.get_by_text(re.compile(r"Experiment #\d+: Remote http://127\.0\.0\.1")).count() == 1

        # A second catalog on the same server: its trends never mix with the shop's.
        _choose(page, "Catalog and visitors", "Upload a scenario JSON…")
        page.locator("[data-testid='stFileUploaderDropzoneInput']").wait_for(state="attached")
        _settle(page)
        page.get_by_test_id("stSidebar").screenshot(path=str(ARTIFACTS / "sidebar-uploader.png"))
        limit = page.get_by_test_id("stFileUploaderDropzoneInstructions").inner_text()
        assert "1MB" in limit and "200MB" not in limit  # the limit that is enforced, not Streamlit's default
        page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(
            {"name": "news.json", "mimeType": "application/json", "buffer": _news_scenario()})
        page.get_by_text("Loaded news").wait_for()
        _settle(page)
        _nav(page, "Rank & reward").click()
        page.get_by_text("the model has not seen this catalog yet", exact=False).first.wait_for()
        _settle(page)
        _tall(page, shots / "wide-rank-new-catalog.png", 900)
        _nav(page, "Simulator").click()
        _simulate(page, 80)
        _nav(page, "Reward trends").click()
        page.get_by_text("Visitors answered").wait_for()
        _settle(page)
        assert _metric(page, "Visitors answered") == "80"
        assert page.get_by_test_id("stMetricLabel").get_by_text("Lead story", exact=True).count() == 1
        assert page.get_by_test_id("stMetricLabel").get_by_text("Hero banner", exact=True).count() == 0

        # Back to the embedded engine and the shop: evaluate, apply, and the applied policy is live.
        page.locator(".st-key-backend-kind").get_by_text("Embedded", exact=True).click()
        _settle(page)
        _choose(page, "Catalog and visitors", "seed (quickstart catalog)")
        _settle(page)
        page.get_by_text(re.compile(r"Experiment #\d+: Embedded engine, scenario seed,")).wait_for()
        _nav(page, "Reward trends").click()
        page.get_by_text("Visitors answered").wait_for()
        _settle(page)
        _tall(page, shots / "wide-trends.png", 2300)
        _nav(page, "Evaluate").click()
        _choose(page, "Time range", "All logged events")
        _button(page, "eval-run").click()
        page.get_by_role("heading", name="Results").wait_for(timeout=120_000)
        _settle(page)
        if _button(page, "eval-apply").count():
            name = _button(page, "eval-apply").inner_text().strip().splitlines()[-1].removeprefix("Apply ").strip()
            _button(page, "eval-apply").click()
        else:
            page.get_by_text("Apply another candidate").click()
            name = page.get_by_role("combobox", name="Candidate").inner_text().strip()
            _button(page, "eval-apply-other-button").click()
        page.get_by_text(re.compile(rf"{re.escape(name)} is live")).wait_for()
        _settle(page)
        assert page.get_by_text(f"{name} (live)").count() + page.locator(
            "[data-testid='stDataFrame']").count() >= 1
        assert page.get_by_text(re.compile(rf"Applied {re.escape(name)}: the engine now explores")).count() == 1
        assert _button(page, "eval-apply").count() == 0 or name not in _button(page, "eval-apply").inner_text()
        _tall(page, shots / "wide-evaluate.png", 1900)

        # A phone (a 390 px touch screen): the sidebar starts folded away and folds again after navigating.
        page = page.context.browser.new_context(
            viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, device_scale_factor=1,
            user_agent=PHONE_USER_AGENT).new_page()
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/simulator")
        page.get_by_role("heading", name="Simulator").wait_for()
        _settle(page)
        assert not _sidebar_open(page)
        _simulate(page, 400)
        _tall(page, shots / "phone-simulator.png", 1500)
        page.get_by_test_id("stExpandSidebarButton").tap()
        page.wait_for_timeout(600)
        assert _sidebar_open(page)
        _tall(page, shots / "phone-sidebar.png", 844)
        _nav(page, "Reward trends").tap()
        page.get_by_text("Visitors answered").wait_for()
        _settle(page)
        page.wait_for_timeout(600)
        assert not _sidebar_open(page)  # folded again after navigating
        _tall(page, shots / "phone-trends.png", 3000)
        page.get_by_test_id("stExpandSidebarButton").tap()
        page.wait_for_timeout(600)
        _nav(page, "Rank & reward").tap()
        page.get_by_role("heading", name="Rank & reward").wait_for()
        _settle(page)
        page.wait_for_timeout(600)
        assert not _sidebar_open(page)
        _tall(page, shots / "phone-rank.png", 1500)
        page.goto(f"{url}/evaluate")
        page.get_by_role("heading", name="Evaluate").wait_for()
        _settle(page)
        _tall(page, shots / "phone-evaluate.png", 1200)
        assert not errors, errors


def _chart_count(page) -> int:
    """Vega charts drawn on the page (each renders into a canvas or an svg inside its container)."""
    return page.locator("[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg.marks").count()


def test_insight_views_in_chromium(tmp_path: Path) -> None:
    """Trends from the log in a fresh tab and after a reload; the report opens offline from a file; what
    drives the choices; why this action on the cards; cards stack at 390 px. Screenshots of each."""
    home = tmp_path / "home"
    shots = Path(os.environ.get("STUDIO_SHOTS") or ARTIFACTS)
    shots.mkdir(parents=True, exist_ok=True)
    with streamlit_app(home, tmp_path / "streamlit.log") as url, browser_page(1440, 900) as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/simulator")
        _simulate(page, 500)

        # A new tab straight onto the trends: nothing answered in it, so the log's trends, not an empty page.
        tab = page.context.browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
        tab.set_default_timeout(30_000)
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.goto(f"{url}/reward_trends")
        tab.get_by_text("Visitors answered").wait_for()
        _settle(tab)
        assert _metric(tab, "Visitors answered") == "500"
        assert tab.get_by_text("No rewards yet").count() == 0
        tab.wait_for_function("() => document.querySelectorAll(\"[data-testid='stVegaLiteChart']\").length >= 4")
        tab.reload()  # a product owner demoing to a room reloads pages
        tab.get_by_text("Visitors answered").wait_for()
        _settle(tab)
        assert _metric(tab, "Visitors answered") == "500"
        tab.wait_for_function("() => document.querySelectorAll(\"[data-testid='stVegaLiteChart']\").length >= 4")
        _tall(tab, shots / "wide-trends-log.png", 2000)

        # Download report: one HTML file that draws its charts from file://, with the network refused.
        with tab.expect_download() as download:
            _button(tab, "download-report").click()
        report = tmp_path / "report.html"
        download.value.save_as(report)
        offline = page.context.browser.new_context(offline=True).new_page()
        requests: list[str] = []
        offline.on("request", lambda r: requests.append(r.url))
        offline.goto(report.as_uri())
        offline.wait_for_function("() => document.querySelectorAll('.chart svg').length >= 4", timeout=30_000)
        assert offline.get_by_text("could not be drawn").count() == 0
        assert all(u.startswith(("file:", "data:", "blob:", "about:")) for u in requests), requests
        _tall(offline, shots / "wide-report.png", 1800)
        offline.context.close()

        # What drives the choices: a report over the whole log, a chart and advice.
        _nav(tab, "What drives the choices").click()
        tab.get_by_role("heading", name="What drives the choices").wait_for()
        _settle(tab)
        _choose(tab, "Time range", "All logged events")
        _settle(tab)
        _button(tab, "why-run").click()
        tab.get_by_text("What it means").wait_for(timeout=120_000)
        _settle(tab)
        assert tab.get_by_text("matters most").count() == 1
        _tall(tab, shots / "wide-what-drives.png", 1000)

        # Why this action? on each card of the visitor on screen.
        _nav(tab, "Rank & reward").click()
        tab.get_by_role("heading", name="Rank & reward").wait_for()
        _settle(tab)
        assert tab.get_by_text("WHY THIS ACTION?").count() == 2
        _tall(tab, shots / "wide-rank-why.png", 900)

        # A phone: cards stack, the new views fit in 390 px.
        phone = page.context.browser.new_context(
            viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, device_scale_factor=1,
            user_agent=PHONE_USER_AGENT).new_page()
        phone.set_default_timeout(30_000)
        phone.on("pageerror", lambda e: errors.append(str(e)))
        phone.goto(url)
        phone.get_by_role("heading", name="Rank & reward").wait_for()
        _settle(phone)
        assert not _sidebar_open(phone)
        first, second = (_button(phone, f"accept-{slot}").bounding_box() for slot in ("BigHeroPosition",
                                                                                        "SmallSidebar"))
        assert second["y"] > first["y"] + 100 and abs(second["x"] - first["x"]) < 5  # one card under the other
        width = phone.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, width  # nothing wider than the screen
        _tall(phone, shots / "phone-rank-why.png", 1700)
        phone.goto(f"{url}/what_drives")
        phone.get_by_text("What it means").wait_for(timeout=60_000)  # the report made above, listed for any tab
        _settle(phone)
        assert phone.evaluate("() => document.documentElement.scrollWidth") <= 390
        _tall(phone, shots / "phone-what-drives.png", 1500)
        phone.goto(f"{url}/reward_trends")
        phone.get_by_text("Visitors answered").wait_for()
        _settle(phone)
        assert phone.evaluate("() => document.documentElement.scrollWidth") <= 390
        _tall(phone, shots / "phone-trends-log.png", 3000)
        assert not errors, errors
