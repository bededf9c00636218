"""The web client's conversations API (/ossai/conversations) on a real app and a real SQLite file: CRUD,
search, optimistic revisions, soft delete and restore, export and import, validation, restarts, auth."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ossai.server.app import create_app
from ossai.server.context import ServerConfig
from ossai.server.conversations import MAX_MESSAGE_BYTES, MAX_MESSAGES, RESTORE_S
from ossai.server.pool import ModelPool

BASE = "/ossai/conversations"


def conversation(title: str = "Adding numbers", **overrides) -> dict:
    body = {
        "title": title,
        "mode": "reasoning",
        "model": "ossai-demo",
        "system": "You are terse.",
        "settings": {"effort": "medium", "temperature": 1.0, "top_p": 1.0, "max_tokens": None,
                     "confirm_python": False},
        "messages": [
            {"id": "m_1", "parent": None, "role": "user", "content": "What is 2 + 3?",
             "created": 1764500000.0},
            {"id": "m_2", "parent": "m_1", "role": "assistant", "content": "5", "reasoning": "2 + 3 = 5.",
             "reasoning_seconds": 0.4, "tools": [], "status": "done", "error": None,
             "stats": {"model": "ossai-demo", "prompt_tokens": 80, "completion_tokens": 12, "ttft_ms": 95,
                       "tokens_per_s": 140.2, "seconds": 0.2}, "created": 1764500001.0},
        ],
        "active": {"root": "m_1", "m_1": "m_2"},
    }  # fmt: skip
    return body | overrides


def make_client(home: Path, **options) -> TestClient:
    return TestClient(create_app(ModelPool(), ServerConfig(model_name=None, home=home, **options)))


@pytest.fixture
def client(tmp_path) -> Iterator[TestClient]:
    with make_client(tmp_path) as c:
        yield c


def _error(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    for word in words:
        assert word in error["message"], error
    return error


def test_create_get_list(client):
    r = client.post(BASE, json=conversation())
    assert r.status_code == 201
    stored = r.json()
    assert stored["id"].startswith("c_") and len(stored["id"]) == 34 and stored["rev"] == 1
    assert stored["created"] <= stored["updated"] <= time.time()
    sent = conversation()
    for key in ("title", "mode", "model", "system", "settings", "messages", "active"):
        assert stored[key] == sent[key], key  # unknown message fields (stats, reasoning...) are kept
    assert client.get(f"{BASE}/{stored['id']}").json() == stored

    second = client.post(BASE, json={"title": "Empty"}).json()
    assert second["messages"] == [] and second["mode"] == "chat" and second["active"] == {}
    listing = client.get(BASE).json()
    assert listing["object"] == "list" and listing["has_more"] is False
    assert [s["id"] for s in listing["data"]] == [second["id"], stored["id"]]  # most recent first
    assert listing["data"][1] == {"id": stored["id"], "title": "Adding numbers", "created": stored["created"],
                                  "updated": stored["updated"], "mode": "reasoning", "model": "ossai-demo",
                                  "messages": 2}  # fmt: skip

    page = client.get(BASE, params={"limit": 1}).json()
    assert len(page["data"]) == 1 and page["has_more"] is True
    rest = client.get(BASE, params={"limit": 1, "offset": 1}).json()
    assert [s["id"] for s in rest["data"]] == [stored["id"]] and rest["has_more"] is False


def test_search_titles_and_message_text(client):
    long_text = "Intro words. " * 20 + "The Quokka is a small marsupial." + " More text." * 20
    quokka = client.post(BASE, json=conversation("Animals", messages=[
        {"id": "a", "parent": None, "role": "user", "content": long_text}])).json()  # fmt: skip
    greek = client.post(BASE, json=conversation("Ωmega ÉTUDE", messages=[])).json()
    client.post(BASE, json=conversation("Other"))

    (hit,) = client.get(BASE, params={"q": "quokka"}).json()["data"]
    assert hit["id"] == quokka["id"]
    assert "The Quokka is" in hit["snippet"] and hit["snippet"].startswith("…") and len(hit["snippet"]) < 200
    (hit,) = client.get(BASE, params={"q": "ωMEGA étude"}).json()["data"]  # case-insensitive beyond ASCII
    assert hit["id"] == greek["id"] and hit["snippet"] == "Ωmega ÉTUDE"
    assert client.get(BASE, params={"q": "2 + 3"}).json()["data"][0]["title"] == "Other"
    assert client.get(BASE, params={"q": "nothing like this"}).json()["data"] == []
    assert "snippet" not in client.get(BASE).json()["data"][0]
    assert client.get(BASE, params={"q": "%"}).json()["data"] == []  # no LIKE wildcards


def test_put_bumps_rev_and_refuses_a_stale_one(client):
    stored = client.post(BASE, json=conversation()).json()
    cid = stored["id"]
    edited = stored | {"title": "Renamed"}
    r = client.put(f"{BASE}/{cid}", json=edited)
    assert r.status_code == 200
    saved = r.json()
    assert saved["rev"] == 2 and saved["title"] == "Renamed" and saved["created"] == stored["created"]
    assert saved["updated"] >= stored["updated"]

    _error(client.put(f"{BASE}/{cid}", json=edited), 409, "rev 2", "rev 1")  # another tab saved first
    assert client.get(f"{BASE}/{cid}").json()["title"] == "Renamed"
    assert client.put(f"{BASE}/{cid}", json=saved | {"title": "Third"}).json()["rev"] == 3

    _error(client.put(f"{BASE}/{cid}", json=conversation()), 400, "rev")  # no rev
    _error(client.put(f"{BASE}/{cid}", json=saved | {"rev": 3, "id": "c_other"}), 400, "c_other")
    anonymous = {k: v for k, v in saved.items() if k != "id"}
    _error(client.put(f"{BASE}/c_unknown", json=anonymous), 404, "c_unknown")


def test_soft_delete_and_restore(client, tmp_path):
    stored = client.post(BASE, json=conversation()).json()
    cid = stored["id"]
    r = client.delete(f"{BASE}/{cid}")
    assert r.status_code == 200 and r.json() == {"id": cid, "object": "conversation.deleted", "deleted": True}
    _error(client.get(f"{BASE}/{cid}"), 404)
    _error(client.put(f"{BASE}/{cid}", json=stored), 404)
    _error(client.get(f"{BASE}/{cid}/export"), 404)
    _error(client.delete(f"{BASE}/{cid}"), 404)
    assert client.get(BASE).json()["data"] == []

    r = client.post(f"{BASE}/{cid}/restore")
    assert r.status_code == 200 and r.json() == stored
    assert [s["id"] for s in client.get(BASE).json()["data"]] == [cid]
    assert client.post(f"{BASE}/{cid}/restore").json() == stored  # restoring a live one: no change
    _error(client.post(f"{BASE}/c_nope/restore"), 404)


def test_deletes_older_than_seven_days_are_purged_at_open(tmp_path):
    with make_client(tmp_path) as client:
        old, recent = (client.post(BASE, json=conversation()).json()["id"] for _ in range(2))
        client.delete(f"{BASE}/{old}")
        client.delete(f"{BASE}/{recent}")
    with sqlite3.connect(tmp_path / "conversations.db") as db:  # as if deleted eight days ago
        db.execute(
            "UPDATE conversations SET deleted = ? WHERE id = ?", (time.time() - RESTORE_S - 86400, old)
        )
    with make_client(tmp_path) as client:
        _error(client.post(f"{BASE}/{old}/restore"), 404)
        assert client.post(f"{BASE}/{recent}/restore").status_code == 200
    with sqlite3.connect(tmp_path / "conversations.db") as db:
        assert [r[0] for r in db.execute("SELECT id FROM conversations")] == [recent]


def test_conversations_survive_a_restart(tmp_path):
    with make_client(tmp_path) as client:
        stored = client.post(BASE, json=conversation()).json()
        saved = client.put(f"{BASE}/{stored['id']}", json=stored | {"title": "Kept"}).json()
    with make_client(tmp_path) as client:  # a new app (a restarted server) on the same OSSAI_HOME
        assert client.get(f"{BASE}/{stored['id']}").json() == saved
        assert client.get(BASE, params={"q": "kept"}).json()["data"][0]["id"] == stored["id"]


def test_export_json_and_markdown(client):
    tools = [
        {"id": "call_1", "tool": "python", "name": "python", "arguments": "print(2 + 3)",
         "status": "running"},
        {"id": "call_1", "tool": "python", "name": "python", "arguments": "print(2 + 3)",
         "status": "completed", "output": "5\n", "data": {}, "seconds": 0.1},
        {"tool": "function", "name": "get_weather", "arguments": '{"city": "Paris"}'},
    ]  # fmt: skip
    messages = [
        {"id": "m_1", "parent": None, "role": "user", "content": "What is 2 + 3?"},
        {"id": "m_old", "parent": "m_1", "role": "assistant", "content": "An OLD answer",
         "status": "stopped"},
        {"id": "m_2", "parent": "m_1", "role": "assistant", "content": "It is **5**.",
         "reasoning": "Add them.\n\nUse python.", "reasoning_seconds": 0.4, "tools": tools, "status": "done"},
        {"id": "m_3", "parent": "m_2", "role": "user", "content": "Thanks ```x```"},
    ]  # fmt: skip
    stored = client.post(BASE, json=conversation(messages=messages, active={"m_1": "m_2"})).json()
    cid = stored["id"]

    r = client.get(f"{BASE}/{cid}/export", params={"format": "json"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.headers["content-disposition"] == 'attachment; filename="adding-numbers.json"'
    assert json.loads(r.text) == stored
    assert client.get(f"{BASE}/{cid}/export").json() == stored  # json is the default

    r = client.get(f"{BASE}/{cid}/export", params={"format": "markdown"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/markdown")
    assert r.headers["content-disposition"] == 'attachment; filename="adding-numbers.md"'
    md = r.text
    assert md.startswith("# Adding numbers\n")
    assert "> You are terse." in md
    assert "OLD answer" not in md  # only the active thread
    order = ["## User", "What is 2 + 3?", "## Assistant", "<details>", "Thinking (0.4 s)", "> Add them.",
             "</details>", "**Tool call: python** (completed)", "```python\nprint(2 + 3)\n```",
             "Output:", "```\n5\n```", "**Tool call: function · get_weather**", "It is **5**.", "## User",
             "Thanks ```x```"]  # fmt: skip
    positions = []
    for piece in order:
        start = positions[-1] + 1 if positions else 0
        assert piece in md[start:], (piece, md)
        positions.append(md.index(piece, start))
    assert "(running)" not in md  # a call's last event only

    _error(client.get(f"{BASE}/{cid}/export", params={"format": "pdf"}), 400, "format")
    _error(client.get(f"{BASE}/c_unknown/export"), 404)


def test_import_one_or_many_with_new_ids(client):
    exported = client.get(f"{BASE}/{client.post(BASE, json=conversation()).json()['id']}/export").json()
    r = client.post(f"{BASE}/import", json=exported)
    assert r.status_code == 201
    (summary,) = r.json()["data"]
    assert r.json()["object"] == "list" and summary["id"] != exported["id"] and summary["messages"] == 2
    copy = client.get(f"{BASE}/{summary['id']}").json()
    assert (
        copy["rev"] == 1
        and copy["messages"] == exported["messages"]
        and copy["created"] == exported["created"]
    )

    r = client.post(f"{BASE}/import", json={"conversations": [exported, conversation("Second")]})
    assert r.status_code == 201
    assert [s["title"] for s in r.json()["data"]] == ["Adding numbers", "Second"]
    assert len({s["id"] for s in r.json()["data"]} | {exported["id"], summary["id"]}) == 4
    assert len(client.get(BASE).json()["data"]) == 4

    bad = conversation("Bad", messages=[{"id": "x", "role": "robot", "content": ""}])
    _error(client.post(f"{BASE}/import", json={"conversations": [conversation(), bad]}), 400,
           "conversations[1].messages[0].role")  # fmt: skip
    assert len(client.get(BASE).json()["data"]) == 4  # all or nothing
    _error(client.post(f"{BASE}/import", json={"conversations": []}), 400, "conversations")
    _error(client.post(f"{BASE}/import", json=[exported]), 400)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (conversation(colour="blue"), 400, ["colour", "unknown field"]),
        (conversation(mode="chaos"), 400, ["mode"]),
        (conversation(messages=[{"id": "a", "role": "user", "content": "x"}] * 2), 400, ["'a'", "twice"]),
        (conversation(messages=[{"id": "a", "parent": "zz", "role": "user"}]), 400, ["'zz'", "parent"]),
        (
            conversation(
                messages=[
                    {"id": "a", "parent": "b", "role": "user"},
                    {"id": "b", "parent": "a", "role": "assistant"},
                ]
            ),
            400,
            ["cycle"],
        ),
        (conversation(messages=[{"id": "s", "role": "system", "content": "x"}]), 400, ["messages[0].role"]),
        (conversation(messages=[{"role": "user"}]), 400, ["messages[0].id"]),
        (conversation(messages="hi"), 400, ["messages"]),
        (conversation(title=7), 400, ["title"]),
        (["not", "an", "object"], 400, ["JSON object"]),
        (
            conversation(messages=[{"id": "a", "role": "user", "content": "x" * (MAX_MESSAGE_BYTES + 1)}]),
            413,
            ["messages[0]", "bytes"],
        ),
        (
            conversation(messages=[{"id": f"m{i}", "role": "user"} for i in range(MAX_MESSAGES + 1)]),
            413,
            ["2000 messages"],
        ),
    ],
)
def test_bad_conversations_are_refused(client, body, status, words):
    _error(client.post(BASE, json=body), status, *words)
    assert client.get(BASE).json()["data"] == []


def test_more_validation(client, tmp_path):
    many = [{"id": f"m{i}", "role": "user", "content": "y" * 900_000} for i in range(19)]  # 17 MB in all
    with make_client(tmp_path / "big", max_body_bytes=64 * 2**20) as roomy:  # past the body limit
        _error(roomy.post(BASE, json=conversation(messages=many)), 413, "the conversation is")
    r = client.post(BASE, content=b"{not json", headers={"content-type": "application/json"})
    _error(r, 400, "not valid JSON")
    _error(client.get(BASE, params={"limit": 0}), 400, "limit")
    _error(client.get(BASE, params={"offset": -1}), 400, "offset")
    _error(client.get(f"{BASE}/c_unknown"), 404, "c_unknown")
    _error(client.delete(f"{BASE}/c_unknown"), 404)
    ok = client.post(BASE, json=conversation(messages=[{"id": "a", "role": "user", "content": None}]))
    assert ok.status_code == 201


def test_auth_protects_the_api(tmp_path):
    with make_client(tmp_path, api_keys=("sekret",)) as client:
        _error(client.get(BASE), 401, "API key")
        _error(client.post(BASE, json=conversation()), 401)
        headers = {"Authorization": "Bearer sekret"}
        assert client.post(BASE, json=conversation(), headers=headers).status_code == 201
        assert len(client.get(BASE, headers=headers).json()["data"]) == 1


def test_each_api_key_has_its_own_history(tmp_path):
    with make_client(tmp_path, api_keys=("alice-key", "bob-key")) as client:
        alice, bob = ({"Authorization": f"Bearer {k}"} for k in ("alice-key", "bob-key"))
        mine = client.post(BASE, json=conversation("Alice's plans"), headers=alice).json()
        assert client.get(BASE, headers=bob).json()["data"] == []
        assert client.get(BASE, params={"q": "plans"}, headers=bob).json()["data"] == []
        for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/restore"), ("GET", "/export")):
            _error(client.request(method, f"{BASE}/{mine['id']}{path}", headers=bob), 404)
        _error(client.put(f"{BASE}/{mine['id']}", json=mine, headers=bob), 404)
        assert client.get(f"{BASE}/{mine['id']}", headers=alice).json() == mine  # untouched by Bob
    with make_client(tmp_path) as client:  # no keys: one history, whatever placeholder a client sends
        client.post(BASE, json=conversation("Shared"), headers={"Authorization": "Bearer sk-none"})
        assert [c["title"] for c in client.get(BASE).json()["data"]] == ["Shared"]


def test_unpaired_surrogates_are_a_400_not_a_500(client):
    message = '{"id": "a", "role": "user", "content": "x", "reasoning": "\\ud83d"}'
    body = '{"title": "ok", "messages": [' + message + "]}"
    _error(client.post(BASE, content=body, headers={"content-type": "application/json"}), 400, "surrogate")
    body = '{"title": "\\ud83d half an emoji"}'
    assert client.post(BASE, content=body, headers={"content-type": "application/json"}).status_code == 400


def test_search_snippets_come_from_a_bounded_piece_of_long_text(client):
    long = "filler " * 50_000 + "the needle is here " + "more " * 50_000
    client.post(BASE, json=conversation(messages=[{"id": "a", "role": "user", "content": long}]))
    (hit,) = client.get(BASE, params={"q": "NEEDLE"}).json()["data"]
    assert "the needle is here" in hit["snippet"] and len(hit["snippet"]) < 200
