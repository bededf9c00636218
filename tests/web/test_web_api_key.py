"""A server started with --api-key: the page asks for the key on the first 401, sends it on every request,
remembers it on this device only when asked to, and forgets it on request."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.web.conftest import ChatPage, OssaiServer

pytestmark = pytest.mark.browser

KEY = "web-test-key"
STORED = "() => localStorage.getItem('ossai.apiKey')"


def key_dialog(page):
    return page.get_by_role("dialog", name="API key")


def answer(page, key: str, remember: bool) -> None:
    dialog = key_dialog(page)
    expect(dialog).to_be_visible()
    dialog.get_by_label("API key", exact=True).fill(key)
    dialog.get_by_label("Remember on this device").set_checked(remember)
    dialog.get_by_role("button", name="Save", exact=True).click()


def test_the_page_asks_for_the_key_and_sends_it(new_page, keyed_server: OssaiServer):
    page = new_page(keyed_server)
    with page.expect_response(lambda r: r.status == 401):
        page.goto("/#/")
    with page.expect_response(
        lambda r: r.status == 401 and r.request.headers.get("authorization") == "Bearer no"
    ):
        answer(page, "no", remember=True)  # a wrong key: asked again
    answer(page, KEY, remember=True)
    expect(key_dialog(page)).to_be_hidden()
    expect(page.get_by_role("combobox", name="Model")).to_contain_text("ossai-demo")
    assert page.evaluate(STORED) == KEY

    page.reload()  # remembered: no question
    chat = ChatPage(page, keyed_server)
    expect(chat.composer).to_be_editable()
    expect(page.get_by_role("combobox", name="Model")).to_contain_text("ossai-demo")
    expect(key_dialog(page)).to_be_hidden()
    request = chat.send("What is 3 plus 3?")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    chat.finish(request)

    chat.button("Settings").click()
    settings = page.get_by_role("dialog", name="Conversation settings")
    settings.get_by_role("button", name="Forget API key").click()
    assert page.evaluate(STORED) is None
    page.reload()
    expect(key_dialog(page)).to_be_visible()


def test_a_key_not_remembered_stays_out_of_local_storage(new_page, keyed_server: OssaiServer):
    page = new_page(keyed_server)
    page.goto("/#/")
    answer(page, KEY, remember=False)
    expect(key_dialog(page)).to_be_hidden()
    expect(page.get_by_role("combobox", name="Model")).to_contain_text("ossai-demo")
    assert page.evaluate(STORED) is None
    other = page.context.new_page()  # another tab of the same browser profile
    other.goto("/#/")
    expect(key_dialog(other)).to_be_visible()
    other.close()
