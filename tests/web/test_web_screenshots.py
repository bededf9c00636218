"""Screenshots for the README: the chat with a reasoning panel and an Agent-mode python tool card, the model
manager and the dashboard, in the light and the dark theme and at phone width.

Every run takes them (a page that breaks fails here), but writes them to build/screenshots/*.png, which git
ignores, so running the tests leaves the working tree clean. To update the committed ones in
docs/screenshots/ (same file names), run with OSSAI_UPDATE_SCREENSHOTS=1:

    OSSAI_UPDATE_SCREENSHOTS=1 .venv/bin/python -m pytest tests/web/test_web_screenshots.py

A server of their own, so the sidebar shows only the conversations made here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.web.conftest import PHONE, ChatPage, OssaiServer, busy, screenshot, serve

pytestmark = pytest.mark.browser

BACKGROUND = "() => getComputedStyle(document.body).backgroundColor"


@pytest.fixture(scope="module")
def shots_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OssaiServer]:
    handle = serve(tmp_path_factory.mktemp("web-shots-home"))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def agent_conversation(browser, shots_server: OssaiServer) -> str:
    """A conversation made in the page: a plain question in Reasoning mode, then the factorial of 19 in
    Agent mode (the demo model calls python for it at temperature 0)."""
    context = browser.new_context(base_url=shots_server.url)
    try:
        chat = ChatPage(context.new_page(), shots_server).open()
        chat.mode("Reasoning")
        chat.settings(temperature=0)
        chat.ask("What is 12 plus 5?")
        chat.button("New chat").click()
        expect(chat.articles()).to_have_count(0)
        chat.mode("Agent")
        chat.settings(temperature=0)
        chat.effort("low")
        reply = chat.ask("What's the factorial of 19?")
        expect(reply.locator("details.tool-card[data-tool=python]")).to_have_count(1)
        cid = chat.conversation_id()
        shots_server.wait_saved(cid, lambda c: c["messages"][-1].get("status") == "done")
        return cid
    finally:
        context.close()


def open_panels(page) -> None:
    """Open the reasoning panel and the tool card, so the screenshot shows what is in them."""
    for details in page.locator("article details").all():
        if not details.evaluate("d => d.open"):
            details.locator("summary").first.click()


def shoot(page, name: str, phone: bool, settle=lambda: None) -> None:
    """`name`-phone.png, or `name`-light.png and `name`-dark.png (the theme follows the system's);
    `settle()` runs after each change of theme, before the screenshot."""
    if phone:
        screenshot(page, f"{name}-phone")
        return
    page.emulate_media(color_scheme="light")
    settle()
    light = page.evaluate(BACKGROUND)
    screenshot(page, f"{name}-light")
    page.emulate_media(color_scheme="dark")
    settle()
    dark = page.evaluate(BACKGROUND)
    assert dark != light, f"the page did not follow the dark colour scheme ({light} both times)"
    screenshot(page, f"{name}-dark")


def redrawn(page, canvas) -> None:
    """Wait for the chart to be drawn in the theme's colours (a change of theme redraws the charts at once,
    not at their next sample); `data-accent` is the accent colour it was last drawn in."""
    page.wait_for_function(
        """c => c.dataset.accent ===
            getComputedStyle(document.documentElement).getPropertyValue("--accent").trim()""",
        arg=canvas.element_handle(),
        timeout=3_000,
    )


@pytest.mark.parametrize("phone", [False, True], ids=["desktop", "phone"])
def test_screenshots(new_page, shots_server: OssaiServer, agent_conversation: str, phone: bool):
    page = new_page(shots_server, viewport=PHONE if phone else None, color_scheme="light")

    page.goto(f"/#/c/{agent_conversation}")
    expect(page.locator("article[data-role=assistant] details.tool-card[data-tool=python]")).to_be_visible()
    open_panels(page)
    expect(page.locator("article[data-role=assistant] .stats")).to_be_visible()
    shoot(page, "chat", phone)

    page.goto("/#/models")
    row = page.locator('tr[data-model="ossai-demo"]')
    expect(row).to_be_visible()
    if row.get_by_role("button", name="Load", exact=True).count():
        row.get_by_role("button", name="Load", exact=True).click()
    expect(row.get_by_role("button", name="Unload", exact=True)).to_be_visible(timeout=60_000)
    shoot(page, "models", phone)

    page.goto("/#/dashboard")
    canvas = page.get_by_label("Tokens per second chart", exact=True)
    tokens = page.locator("figure").filter(has=canvas)
    with busy(shots_server):
        page.wait_for_function(
            "f => Number(f.getAttribute('data-points')) >= 8", arg=tokens.element_handle(), timeout=30_000
        )
    if phone:
        tokens.scroll_into_view_if_needed()  # the charts, below the meters and figures
    shoot(page, "dashboard", phone, settle=lambda: redrawn(page, canvas))
