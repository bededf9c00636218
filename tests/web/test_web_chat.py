"""Chatting in the browser with the demo model: the streamed reasoning and answer, stop, edit-and-resend,
regenerate and alternatives, the effort selector (checked in the request body), Agent mode's python tool
card, and confirming a python run."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.web.conftest import REPLY_MS, ChatPage, Throttle

pytestmark = pytest.mark.browser

STATS = re.compile(r"\d+ tokens · [\d.,]+ tok/s · TTFT [\d.,]+ ms")
FACTORIAL_19 = "121645100408832000"


def reasoning_text(reply):
    """The reasoning panel's text, without its summary line ("Thinking…", "Thought for N s")."""
    return reply.locator("details.reasoning > :not(summary)")


def squeeze(text: str | None) -> str:
    return " ".join((text or "").split())


def test_a_reply_streams_its_reasoning_then_its_answer(chat: ChatPage):
    chat.open()
    chat.mode("Reasoning")
    chat.settings(temperature=0)
    chat.effort("high")  # a long reasoning, so there is time to watch it stream
    throttle = Throttle(chat.page)
    throttle.set(2_000)  # ~20 kB of events: several seconds, in chunks
    request = chat.send("What is 12 plus 5?")
    body = request.post_data_json
    assert body["stream"] is True
    assert body["messages"][-1] == {"role": "user", "content": "What is 12 plus 5?"}

    reply = chat.last_reply
    reasoning = reply.locator("details.reasoning")
    expect(reply).to_have_attribute("data-status", "streaming")
    expect(reasoning_text(reply).first).to_contain_text(re.compile(r"\w"))  # arrives while it streams
    expect(reasoning.locator("summary")).to_contain_text("Thinking")
    assert reply.get_attribute("data-status") == "streaming", "the reply finished before it could be watched"

    throttle.set(None)
    chat.finish(request)
    expect(reply.locator(".answer")).to_contain_text(re.compile(r"\S"))
    expect(reasoning.locator("summary")).to_contain_text(re.compile(r"Thought for [\d.]+ ?s"))
    assert "<|" not in reply.inner_text()  # no harmony tokens leak into the page
    expect(reply.locator(".stats")).to_have_text(STATS)
    expect(chat.articles("user")).to_contain_text(["What is 12 plus 5?"])


def test_stop_mid_stream_keeps_the_partial_reply_across_a_reload(chat: ChatPage):
    chat.open()
    chat.mode("Reasoning")
    chat.effort("high")
    throttle = Throttle(chat.page)
    throttle.set(300)  # a few hundred bytes a second: the reply takes over a minute to arrive
    request = chat.send("What is 31 plus 11?")
    reply = chat.last_reply
    expect(reply).to_have_attribute("data-status", "streaming")
    expect(reasoning_text(reply).first).to_contain_text(re.compile(r"\w"))
    chat.button("Stop").click()
    expect(reply).to_have_attribute("data-status", "stopped")
    expect(reply.get_by_text("stopped", exact=True)).to_be_visible()
    expect(chat.button("Stop")).to_have_count(0)
    expect(chat.button("Send")).to_be_visible()
    throttle.set(None)
    shown = squeeze(" ".join(reasoning_text(reply).all_text_contents()))

    cid = chat.conversation_id()
    stored = chat.server.wait_saved(cid, lambda c: c["messages"][-1].get("status") == "stopped")
    partial = stored["messages"][-1]
    assert partial["role"] == "assistant" and partial["reasoning"].strip()
    assert len(partial["reasoning"]) < 2000  # a high-effort reasoning is far longer: it was cut short

    chat.page.reload()
    reply = chat.last_reply
    expect(reply).to_have_attribute("data-status", "stopped")
    expect(reply.get_by_text("stopped", exact=True)).to_be_visible()
    start = squeeze(partial["reasoning"])[:40]
    assert start in shown  # what was stored is what was shown
    expect(reasoning_text(reply).first).to_contain_text(start)
    assert request.url.endswith("/v1/chat/completions")


def test_edit_and_resend(chat: ChatPage):
    chat.open()
    chat.ask("What is 2 plus 3?")
    cid = chat.conversation_id()
    first = chat.articles("user").first
    first.get_by_role("button", name="Edit", exact=True).click()
    editor = chat.page.get_by_role("textbox", name="Edit message")
    expect(editor).to_have_value("What is 2 plus 3?")
    editor.fill("What is 4 plus 4?")
    with chat.expect_completion() as info:
        chat.button("Send edited message").click()
    assert info.value.post_data_json["messages"][-1]["content"] == "What is 4 plus 4?"
    assert all("2 plus 3" not in m.get("content", "") for m in info.value.post_data_json["messages"])
    chat.finish(info.value)
    expect(chat.articles("user")).to_contain_text(["What is 4 plus 4?"])
    expect(chat.articles("assistant")).to_have_count(1)

    stored = chat.server.wait_saved(cid, lambda c: len(c["messages"]) == 4)
    users = [m for m in stored["messages"] if m["role"] == "user"]
    assert [m["parent"] for m in users] == [None, None]  # the edit is a sibling of the original
    assert stored["active"]["root"] == users[1]["id"]


def test_regenerate_and_switch_between_alternatives(chat: ChatPage):
    chat.open()
    first = chat.ask("What is 6 plus 1?").locator(".answer").inner_text()
    cid = chat.conversation_id()
    with chat.expect_completion() as info:
        chat.last_reply.get_by_role("button", name="Regenerate").click()
    reply = chat.finish(info.value)
    assert info.value.post_data_json["messages"][-1]["content"] == "What is 6 plus 1?"
    expect(chat.articles("assistant")).to_have_count(1)
    expect(reply.locator(".alt-count")).to_have_text("2/2")
    second = reply.locator(".answer").inner_text()

    reply.get_by_role("button", name="Previous alternative").click()
    expect(reply.locator(".alt-count")).to_have_text("1/2")
    expect(reply.locator(".answer")).to_have_text(first)
    reply.get_by_role("button", name="Next alternative").click()
    expect(reply.locator(".alt-count")).to_have_text("2/2")
    expect(reply.locator(".answer")).to_have_text(second)
    reply.get_by_role("button", name="Previous alternative").click()
    expect(reply.locator(".alt-count")).to_have_text("1/2")

    def first_reply_active(c: dict) -> bool:
        replies = [m for m in c["messages"] if m["role"] == "assistant"]
        return len(replies) == 2 and c["active"].get(replies[0]["parent"]) == replies[0]["id"]

    stored = chat.server.wait_saved(cid, first_reply_active)  # switching saves the choice
    replies = [m for m in stored["messages"] if m["role"] == "assistant"]
    assert replies[0]["parent"] == replies[1]["parent"]  # siblings: alternatives of one reply
    chat.page.reload()  # the alternative shown is part of the conversation
    expect(chat.last_reply.locator(".alt-count")).to_have_text("1/2")
    expect(chat.last_reply.locator(".answer")).to_have_text(first)


def test_the_effort_selector_sets_the_requests_reasoning_effort(chat: ChatPage):
    chat.open()
    chat.mode("Reasoning")
    efforts = []
    for effort in ("high", "low", "medium"):
        chat.effort(effort)
        request = chat.send(f"What is 1 plus {len(efforts) + 1}?")
        efforts.append(request.post_data_json.get("reasoning_effort"))
        chat.finish(request)
    assert efforts == ["high", "low", "medium"]


def test_agent_mode_shows_the_python_tool_card(chat: ChatPage):
    chat.open()
    chat.mode("Agent")
    chat.settings(temperature=0)  # the demo model reliably calls python for this at temperature 0
    chat.effort("low")
    request = chat.send("What's the factorial of 19?")
    assert "python" in request.post_data_json["ossai"]["builtin_tools"]
    reply = chat.finish(request)
    card = reply.locator("details.tool-card[data-tool=python]")
    expect(card).to_have_count(1)
    expect(card).to_contain_text("factorial")  # the code
    expect(card).to_contain_text(FACTORIAL_19)  # what the sandbox printed
    if not card.evaluate("details => details.open"):
        card.locator("summary").first.click()
    expect(card).to_have_attribute("open", "")
    expect(card.get_by_text(FACTORIAL_19)).to_be_visible()
    expect(reply.locator(".answer")).to_contain_text(re.compile(r"\S"))


def test_confirm_before_running_python(chat: ChatPage):
    chat.open()
    chat.mode("Agent")
    chat.settings(temperature=0, confirm_python=True)
    chat.effort("low")
    request = chat.send("What's the factorial of 19?")
    assert request.post_data_json["ossai"]["confirm"] == ["python"]
    card = chat.last_reply.locator("details.tool-card[data-tool=python]")
    expect(card.get_by_role("button", name="Run", exact=True)).to_be_visible(timeout=REPLY_MS)
    expect(card.get_by_role("button", name="Skip", exact=True)).to_be_visible()
    expect(card).to_contain_text("factorial")  # the code is shown before it runs
    assert FACTORIAL_19 not in (card.text_content() or "")
    with chat.page.expect_response(lambda r: "/confirm" in r.url) as confirmed:
        card.get_by_role("button", name="Run", exact=True).click()
    assert confirmed.value.status == 200 and confirmed.value.json()["approved"] is True
    chat.finish(request)
    expect(card).to_contain_text(FACTORIAL_19)
    expect(card.get_by_role("button", name="Run", exact=True)).to_have_count(0)
