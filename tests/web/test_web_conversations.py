"""Conversations in the browser: history survives a reload and a server restart; delete with undo; the
sidebar's search."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.web.conftest import ChatPage, OssaiServer, conversation

pytestmark = pytest.mark.browser


def sidebar(page):
    return page.get_by_role("navigation", name="Conversations")


def test_reload_and_restart_keep_the_history(chat: ChatPage, restart_server):
    chat.open()
    answer = chat.ask("What is 9 plus 4?").locator(".answer").inner_text()
    cid = chat.conversation_id()
    chat.server.wait_saved(cid, lambda c: len(c["messages"]) == 2 and c["messages"][1]["status"] == "done")
    item = sidebar(chat.page).locator(f'li[data-conversation-id="{cid}"]')
    expect(item).to_be_visible()

    for restart in (False, True):
        if restart:
            restart_server()  # same port, same OSSAI_HOME
        chat.page.reload()
        expect(chat.articles()).to_have_count(2)
        expect(chat.articles("user")).to_contain_text(["What is 9 plus 4?"])
        expect(chat.last_reply).to_have_attribute("data-status", "done")
        expect(chat.last_reply.locator(".answer")).to_have_text(answer)
        expect(item).to_be_visible()


def test_delete_then_undo(page, server: OssaiServer):
    body = conversation(
        "Delete me, then undo",
        [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi there", "status": "done"},
        ],
    )
    created = server.api("POST", "/ossai/conversations", json=body)
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    page.goto("/#/")
    item = sidebar(page).locator(f'li[data-conversation-id="{cid}"]')
    expect(item).to_contain_text("Delete me, then undo")

    item.get_by_role("button", name="Delete", exact=True).click()
    toast = page.get_by_role("status").filter(has_text="Conversation deleted")
    expect(toast).to_be_visible()
    expect(item).to_have_count(0)
    assert server.api("GET", f"/ossai/conversations/{cid}").status_code == 404

    toast.get_by_role("button", name="Undo").click()
    expect(item).to_contain_text("Delete me, then undo")
    restored = server.api("GET", f"/ossai/conversations/{cid}")
    assert restored.status_code == 200 and restored.json()["messages"][1]["content"] == "hi there"
    item.get_by_role("button", name="Delete me, then undo").click()
    expect(page.locator("article[data-role=assistant] .answer")).to_have_text("hi there")


def test_search_conversations(page, server: OssaiServer):
    for title, text in (("Zebra facts", "stripes everywhere"), ("Plain title", "a quokkaword inside")):
        body = conversation(title, [{"role": "user", "content": text}])
        assert server.api("POST", "/ossai/conversations", json=body).status_code == 201
    page.goto("/#/")
    items = sidebar(page).locator("li[data-conversation-id]")
    expect(items.filter(has_text="Zebra facts")).to_have_count(1)
    page.get_by_role("searchbox", name="Search conversations").fill("quokkaword")  # message text
    expect(items.filter(has_text="Plain title")).to_have_count(1)
    expect(items.filter(has_text="Zebra facts")).to_have_count(0)
    page.get_by_role("searchbox", name="Search conversations").fill("")
    expect(items.filter(has_text="Zebra facts")).to_have_count(1)
