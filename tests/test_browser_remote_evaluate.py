"""A real browser against ``streamlit run app.py`` configured for a remote endpoint (a real ``python -m personalizer
serve`` subprocess): the Evaluate page runs an offline evaluation on the server, shows it, applies its best
candidate; wide (1400 px) and phone (390 px) screenshots.

``STUDIO_SHOTS=docs/screenshots python -m pytest tests/test_browser_remote_evaluate.py`` refreshes the README's
``wide-evaluate-remote.png`` and ``phone-evaluate-remote.png``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from server_fixtures import KEY, ProcessServer
from test_browser import ARTIFACTS, PHONE_USER_AGENT, _button, _choose, _settle, _tall, browser_page, streamlit_app

from personalizer.client import PersonalizerClient
from personalizer.dashboard.scenarios import builtin
from personalizer.simulation import simulate

pytestmark = pytest.mark.browser


def test_a_remote_evaluation_in_chromium(tmp_path: Path) -> None:
    shots = Path(os.environ.get("STUDIO_SHOTS") or ARTIFACTS)
    shots.mkdir(parents=True, exist_ok=True)
    with ProcessServer(tmp_path / "server-data", key=KEY) as server, PersonalizerClient(server.base, KEY) as client:
        simulate(client, builtin("seed"), 400, seed=11)  # the server's log: 400 answered visitors
        with streamlit_app(tmp_path / "home", tmp_path / "streamlit.log", (server.base, KEY)) as url, \
                    browser_page(1400, 900) as page:
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/evaluate")
            page.get_by_role("heading", name="Evaluate").wait_for()
            _settle(page)
            assert page.get_by_text("embedded engine").count() == 0
            _choose(page, "Time range", "All logged events")
            _settle(page)
            _button(page, "eval-run").click()
            page.get_by_role("heading", name="Results").wait_for(timeout=120_000)
            _settle(page)
            listed = client.list_evaluations()
            assert [e["status"] for e in listed] == ["Succeeded"]  # it ran on the server
            assert page.get_by_text(re.compile(r"400 events")).count() >= 1
            assert page.get_by_text(re.compile(r"from the server's log")).count() == 1
            _tall(page, shots / "wide-evaluate-remote.png", 2000)

            if _button(page, "eval-apply").count():
                name = _button(page, "eval-apply").inner_text().strip().splitlines()[-1]
                name = name.removeprefix("Apply ").strip()
                _button(page, "eval-apply").click()
            else:
                page.get_by_text("Apply another candidate").click()
                name = page.get_by_role("combobox", name="Candidate").inner_text().strip()
                _button(page, "eval-apply-other-button").click()
            page.get_by_text(re.compile(rf"Applied {re.escape(name)}: the server now")).wait_for()
            _settle(page)
            assert client.get_policy()["name"] == name

            # A phone (390 px): a new session, on the configured endpoint, shows the server's evaluation.
            phone = page.context.browser.new_context(
                viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, device_scale_factor=1,
                user_agent=PHONE_USER_AGENT).new_page()
            phone.set_default_timeout(30_000)
            phone.on("pageerror", lambda e: errors.append(str(e)))
            phone.goto(f"{url}/evaluate")
            phone.get_by_role("heading", name="Results").wait_for(timeout=60_000)
            _settle(phone)
            assert phone.evaluate("() => document.documentElement.scrollWidth") <= 390
            _tall(phone, shots / "phone-evaluate-remote.png", 2600)
            assert not errors, errors
