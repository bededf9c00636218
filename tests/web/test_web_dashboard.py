"""The dashboard: its charts take samples from /ossai/stats/stream while requests run, the loaded model is
listed, and the CPU and memory meters are there."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from tests.web.conftest import OssaiServer, busy

pytestmark = pytest.mark.browser

CHARTS = ("Tokens per second chart", "Time to first token chart", "KV cache use chart")


def figure(page, label: str):
    return page.locator("figure").filter(has=page.get_by_label(label, exact=True))


def points(page, label: str) -> int:
    return int(figure(page, label).get_attribute("data-points") or 0)


def test_the_charts_update_while_a_request_runs(new_page, server: OssaiServer):
    page = new_page(server)
    with page.expect_request(lambda r: "/ossai/stats/stream" in r.url):
        page.goto("/#/dashboard")
    expect(page.get_by_role("heading", name="Dashboard", exact=True)).to_be_visible()
    for label in CHARTS:
        expect(figure(page, label)).to_have_count(1)
        expect(figure(page, label)).to_have_attribute("data-points", re.compile(r"^\d+$"))
    expect(page.get_by_role("meter", name=re.compile("CPU", re.I))).to_be_visible()
    expect(page.get_by_role("meter", name=re.compile("RAM|memory", re.I))).to_be_visible()
    expect(page.get_by_text("Requests running").first).to_be_visible()
    expect(page.get_by_text("Requests queued").first).to_be_visible()

    before = {label: points(page, label) for label in CHARTS}
    generated = server.api("GET", "/ossai/stats").json()["tokens"]["generated_total"]
    rates = []
    with busy(server):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rates.append(server.api("GET", "/ossai/stats").json()["tokens"]["tokens_per_s"])
            if all(points(page, label) >= before[label] + 3 for label in CHARTS) and max(rates) > 0:
                break
            page.wait_for_timeout(250)
    after = {label: points(page, label) for label in CHARTS}
    assert all(after[label] >= before[label] + 3 for label in CHARTS), (before, after)
    assert max(rates) > 0, "no token rate while requests ran"
    assert server.api("GET", "/ossai/stats").json()["tokens"]["generated_total"] > generated
    expect(page.get_by_role("table", name="Loaded models")).to_contain_text("ossai-demo")
    page.wait_for_timeout(1500)
    assert points(page, CHARTS[0]) > after[CHARTS[0]], "the charts stopped sampling"
