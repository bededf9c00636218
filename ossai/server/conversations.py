"""The web client's conversations: a SQLite store (`OSSAI_HOME/conversations.db`) and the
`/ossai/conversations` routes over it (see docs/web-client.md for the contract).

A conversation is one JSON document (title, mode, model, system prompt, settings, the message tree and
the `active` path through it) kept whole in one row, with a few columns beside it for listing and
searching. Saves are optimistic: a PUT names the `rev` it was read at and fails with 409 when another tab
saved first. Deletes are soft for seven days (undo), after which the rows are purged when the store opens.
Every call opens its own short-lived connection (WAL, so readers never wait on a writer) in a worker
thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ossai.errors import BadRequest, Conflict, NotFound, TooLarge
from ossai.server.confirm import owner_of
from ossai.server.context import context

MAX_MESSAGES = 2000
MAX_MESSAGE_BYTES = 2**20  # 1 MB of JSON text per message (content, reasoning, tool output)
MAX_CONVERSATION_BYTES = 16 * 2**20
RESTORE_S = 7 * 86400  # how long a deleted conversation can be restored
BUSY_TIMEOUT_S = 10.0
SNIPPET_BEFORE, SNIPPET_AFTER = 40, 80

router = APIRouter(prefix="/ossai/conversations")
JsonBody = Annotated[Any, Body()]  # any JSON: checked by `parse`, for messages that name the field


# --- what a client sends -----------------------------------------------------------------------------


class MessageIn(BaseModel):
    """One message of the tree; fields beyond these (reasoning, tools, status, stats...) are kept as sent."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=200)
    parent: str | None = None
    role: Literal["user", "assistant"]
    content: str | None = ""
    created: float | None = Field(None, allow_inf_nan=False)


class ConversationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = None  # ignored on create and import (the server names conversations)
    rev: int | None = None  # required on PUT: the revision the client read
    title: str = Field("", max_length=1000)
    created: float | None = Field(None, allow_inf_nan=False)
    updated: float | None = Field(None, allow_inf_nan=False)
    mode: Literal["chat", "reasoning", "agent"] = "chat"
    model: str | None = None
    system: str | None = ""
    settings: dict[str, Any] = Field(default_factory=dict)
    messages: list[MessageIn] = Field(default_factory=list)
    active: dict[str, str] = Field(default_factory=dict)


def _location(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse(data: Any, where: str = "") -> ConversationIn:
    """A conversation from a decoded JSON body, checked: a 400 (or 413 over a limit) says what is wrong."""
    if not isinstance(data, dict):
        raise BadRequest(f"{where or 'the body'} must be a JSON object (a conversation)", where or None)
    messages = data.get("messages")
    if isinstance(messages, list) and len(messages) > MAX_MESSAGES:
        raise TooLarge(
            f"{where}messages: a conversation holds at most {MAX_MESSAGES} messages, got {len(messages)}",
            f"{where}messages",
        )
    try:
        conversation = ConversationIn.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = where + _location(first["loc"])
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown field (a conversation has id, rev, title, created, updated, mode, model, "
            message += "system, settings, messages and active)"
        raise BadRequest(f"{param}: {message}" if param else message, param or None) from None
    try:
        json.dumps(conversation.model_dump(), allow_nan=False, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # "\ud83d" alone is valid JSON but no text: SQLite and UTF-8 refuse it
        raise BadRequest(f"{where or 'the conversation'} holds an unpaired UTF-16 surrogate") from None
    except ValueError:
        raise BadRequest(f"{where or 'the conversation'} holds NaN or Infinity, which JSON cannot") from None
    _check_tree(conversation, where)
    return conversation


def _check_tree(conversation: ConversationIn, where: str) -> None:
    ids: dict[str, MessageIn] = {}
    for i, message in enumerate(conversation.messages):
        if message.id in ids:
            raise BadRequest(f"{where}messages[{i}].id: {message.id!r} is used twice", f"{where}messages")
        ids[message.id] = message
    for i, message in enumerate(conversation.messages):
        if message.parent is not None and message.parent not in ids:
            raise BadRequest(
                f"{where}messages[{i}].parent: {message.parent!r} is not a message of this conversation",
                f"{where}messages",
            )
        size = len(json.dumps(message.model_dump(), ensure_ascii=False).encode())
        if size > MAX_MESSAGE_BYTES:
            raise TooLarge(
                f"{where}messages[{i}] ({message.id}) is {size} bytes; a message holds at most "
                f"{MAX_MESSAGE_BYTES} bytes",
                f"{where}messages",
            )
    done: set[str] = set()  # messages known to lead to the root
    for message in conversation.messages:
        path: set[str] = set()
        node: MessageIn | None = message
        while node is not None and node.id not in done:
            if node.id in path:
                raise BadRequest(f"{where}messages: the parents of {node.id!r} form a cycle", "messages")
            path.add(node.id)
            node = ids[node.parent] if node.parent is not None else None
        done |= path


# --- the store ---------------------------------------------------------------------------------------

Migration = Callable[[sqlite3.Connection], None]


def _m001_conversations(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,     -- a hash of the API key that made it ('' on a server without keys)
            rev INTEGER NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            deleted REAL,            -- when it was (soft-)deleted; NULL: live
            title TEXT NOT NULL,
            mode TEXT NOT NULL,
            model TEXT,
            messages INTEGER NOT NULL,
            search TEXT NOT NULL,    -- the title and the messages' text, casefolded, for ?q=
            text TEXT NOT NULL,      -- the same, as written: the snippets come from it
            body TEXT NOT NULL       -- the whole conversation, as JSON
        )"""
    )
    db.execute(
        "CREATE INDEX conversations_updated ON conversations (owner, updated DESC) WHERE deleted IS NULL"
    )


MIGRATIONS: list[Migration] = [_m001_conversations]  # applied in order; PRAGMA user_version counts them


def _texts(conversation: dict[str, Any]) -> list[str]:
    """What ?q= searches: the messages' text, then the title."""
    texts = [m.get("content") or "" for m in conversation["messages"]]
    return [t for t in texts if isinstance(t, str) and t] + [conversation["title"]]


def _summary(row: sqlite3.Row) -> dict[str, Any]:
    return {"id": row["id"], "title": row["title"], "created": row["created"], "updated": row["updated"],
            "mode": row["mode"], "model": row["model"], "messages": row["messages"]}  # fmt: skip


def snippet(texts: Sequence[str], query: str) -> str | None:
    """The first match of `query` (case-insensitive) in `texts`, with some text around it."""
    pattern = re.compile(re.escape(query), re.IGNORECASE)
    for text in texts:
        match = pattern.search(text)
        if match is None:
            if query.casefold() not in text.casefold():
                continue
            start, end = 0, min(len(text), SNIPPET_BEFORE + SNIPPET_AFTER)  # a match only after folding
        else:
            start = max(0, match.start() - SNIPPET_BEFORE)
            end = min(len(text), match.end() + SNIPPET_AFTER)
        piece = " ".join(text[start:end].split())
        return ("…" if start > 0 else "") + piece + ("…" if end < len(text) else "")
    return None


class ConversationStore:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            self._migrate(db)
            db.execute("DELETE FROM conversations WHERE deleted < ?", (time.time() - RESTORE_S,))

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")  # one starter migrates, the others wait and see it done
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, fn in enumerate(MIGRATIONS[version:], start=version + 1):
                fn(db)
                db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _document(conversation: ConversationIn, cid: str, rev: int, created: float, updated: float) -> dict:
        out: dict[str, Any] = {"id": cid, "rev": rev, "title": conversation.title, "created": created,
                               "updated": updated, "mode": conversation.mode, "model": conversation.model,
                               "system": conversation.system or "", "settings": conversation.settings,
                               "messages": [m.model_dump() for m in conversation.messages],
                               "active": conversation.active}  # fmt: skip
        return out

    @staticmethod
    def _row(document: dict[str, Any]) -> tuple[str, int, float, float, str, str, Any, int, str, str, str]:
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
        if len(body.encode()) > MAX_CONVERSATION_BYTES:
            raise TooLarge(
                f"the conversation is {len(body.encode())} bytes; at most {MAX_CONVERSATION_BYTES} are kept"
            )
        text = "\n".join(_texts(document))
        return (document["id"], document["rev"], document["created"], document["updated"],
                document["title"], document["mode"], document["model"], len(document["messages"]),
                text.casefold(), text, body)  # fmt: skip

    @staticmethod
    def _load(row: sqlite3.Row) -> dict[str, Any]:
        document = json.loads(row["body"])
        return document | {"id": row["id"], "rev": row["rev"], "created": row["created"],
                           "updated": row["updated"]}  # fmt: skip

    _INSERT = """INSERT INTO conversations (id, rev, created, updated, title, mode, model, messages,
                 search, text, body, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""

    def summaries(
        self, owner: str, query: str | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Live conversations, most recently updated first (matching `query` when given)."""
        where, args = "owner = ? AND deleted IS NULL", [owner]
        columns = "id, title, created, updated, mode, model, messages"
        if query:
            where += " AND instr(search, ?) > 0"
            args.append(query.casefold())
            # a bounded piece of the text around the match: never whole conversations for a snippet
            # (casefolding may shift positions a little: the margin covers it)
            columns += ", substr(text, max(1, instr(search, ?) - 400), ?) AS piece"
            args = [query.casefold(), len(query) + 1000, *args]
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {columns} FROM conversations WHERE {where} ORDER BY updated DESC, id "
                "LIMIT ? OFFSET ?",
                (*args, limit + 1, offset),
            ).fetchall()
        out = []
        for row in rows[:limit]:
            summary = _summary(row)
            if query:
                found = snippet([row["piece"]], query)
                if found is not None:
                    summary["snippet"] = found
            out.append(summary)
        return out, len(rows) > limit

    def create_many(self, owner: str, conversations: Sequence[ConversationIn]) -> list[dict]:
        """Store new conversations (new ids, rev 1, `created` kept if given) in one transaction."""
        now = time.time()
        documents = []
        for conversation in conversations:
            created = conversation.created or now
            documents.append(self._document(conversation, f"c_{uuid.uuid4().hex}", 1, created, now))
        rows = [(*self._row(d), owner) for d in documents]
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(self._INSERT, rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return documents

    def get(self, owner: str, cid: str) -> dict[str, Any]:
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM conversations WHERE id = ? AND owner = ? AND deleted IS NULL", (cid, owner)
            ).fetchone()
        if row is None:
            raise _not_found(cid)
        return self._load(row)

    def update(self, owner: str, cid: str, conversation: ConversationIn) -> dict[str, Any]:
        if conversation.rev is None:
            raise BadRequest("rev: the revision the conversation was read at is required", "rev")
        if conversation.id is not None and conversation.id != cid:
            raise BadRequest(f"id: the body is conversation {conversation.id!r}, the URL {cid!r}", "id")
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT rev, created FROM conversations WHERE id = ? AND owner = ? AND deleted IS NULL",
                    (cid, owner),
                ).fetchone()
                if row is None:
                    raise _not_found(cid)
                if row["rev"] != conversation.rev:
                    raise Conflict(
                        f"conversation {cid} was saved elsewhere since you read it (it is at rev "
                        f"{row['rev']}, you sent rev {conversation.rev}); load it again",
                        "rev",
                    )
                document = self._document(conversation, cid, row["rev"] + 1, row["created"], time.time())
                values = self._row(document)
                db.execute(
                    "UPDATE conversations SET rev = ?, updated = ?, title = ?, mode = ?, model = ?, "
                    "messages = ?, search = ?, text = ?, body = ? WHERE id = ?",
                    (values[1], *values[3:], cid),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return document

    def delete(self, owner: str, cid: str) -> None:
        with self._connect() as db:
            changed = db.execute(
                "UPDATE conversations SET deleted = ? WHERE id = ? AND owner = ? AND deleted IS NULL",
                (time.time(), cid, owner),
            ).rowcount
        if not changed:
            raise _not_found(cid)

    def restore(self, owner: str, cid: str) -> dict[str, Any]:
        """Undo a delete (within the seven days); a live conversation is returned as it is."""
        with self._connect() as db:
            db.execute(
                "UPDATE conversations SET deleted = NULL WHERE id = ? AND owner = ? AND deleted >= ?",
                (cid, owner, time.time() - RESTORE_S),
            )
        return self.get(owner, cid)

    async def call(self, method: Callable[..., Any], *args: Any) -> Any:
        """A store method in a worker thread: SQLite (and JSON of up to 16 MB) stays off the event loop."""
        return await asyncio.to_thread(method, *args)


def _not_found(cid: str) -> NotFound:
    return NotFound(f"no conversation {cid!r} (unknown, or deleted)", "id")


_OPENING = threading.Lock()


async def conversation_store(request: Request) -> ConversationStore:
    """The app's store, opened (migrated, purged of old deletes) on first use."""
    state = request.app.state
    store = getattr(state, "conversation_store", None)
    if store is not None:
        return store
    path = context(request).config.home / "conversations.db"

    def open_once() -> ConversationStore:
        with _OPENING:
            if getattr(state, "conversation_store", None) is None:
                state.conversation_store = ConversationStore(path)
            return state.conversation_store

    return await asyncio.to_thread(open_once)


# --- export ------------------------------------------------------------------------------------------


def _fence(text: str, language: str = "") -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{language}\n{text.rstrip()}\n{ticks}"


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.strip().splitlines())


def active_thread(conversation: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages shown: the `active` child of each parent from the root (the latest child where
    `active` names none, or names one that is not a child)."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    for message in conversation["messages"]:
        children.setdefault(message.get("parent"), []).append(message)
    active = conversation.get("active") or {}
    thread: list[dict[str, Any]] = []
    parent: str | None = None
    seen: set[str] = set()
    while True:
        options = children.get(parent, [])
        if not options:
            return thread
        wanted = active.get("root" if parent is None else parent)
        chosen = next((m for m in options if m["id"] == wanted), options[-1])
        if chosen["id"] in seen:
            return thread
        seen.add(chosen["id"])
        thread.append(chosen)
        parent = chosen["id"]


def _tool_markdown(entry: dict[str, Any]) -> str:
    tool = str(entry.get("tool") or "tool")
    name = str(entry.get("name") or tool)
    label = f"**Tool call: {tool}**" if name == tool else f"**Tool call: {tool} · {name}**"
    if entry.get("status"):
        label += f" ({entry['status']})"
    parts = [label]
    arguments = entry.get("arguments")
    if arguments:
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, indent=2)
        parts.append(_fence(text, "python" if tool == "python" else "json"))
    output = entry.get("output")
    if output:
        parts.append("Output:\n\n" + _fence(output if isinstance(output, str) else json.dumps(output)))
    return "\n\n".join(parts)


def _tool_entries(tools: Any) -> list[dict[str, Any]]:
    """A message's tool events, the last event of each call id (running, then completed)."""
    entries: dict[Any, dict[str, Any]] = {}
    for i, entry in enumerate(tools if isinstance(tools, list) else []):
        if isinstance(entry, dict):
            entries[entry.get("id") or f"#{i}"] = entry
    return list(entries.values())


def _when(epoch: Any) -> str:
    try:
        return dt.datetime.fromtimestamp(float(epoch), dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def to_markdown(conversation: dict[str, Any]) -> str:
    """The active thread as a readable document: reasoning folded away, tool calls as code blocks."""
    title = conversation.get("title") or "Untitled conversation"
    facts = [f"Model: {conversation.get('model') or '?'}", f"Mode: {conversation.get('mode')}",
             f"Created: {_when(conversation.get('created'))}"]  # fmt: skip
    parts = [f"# {title}", "*" + " · ".join(facts) + "*"]
    if conversation.get("system"):
        parts.append("**System prompt**\n\n" + _quote(conversation["system"]))
    for message in active_thread(conversation):
        role = message.get("role")
        parts.append("---")
        parts.append("## User" if role == "user" else "## Assistant")
        reasoning = message.get("reasoning")
        if isinstance(reasoning, str) and reasoning.strip():
            seconds = message.get("reasoning_seconds")
            summary = f"Thinking ({seconds:g} s)" if isinstance(seconds, int | float) else "Thinking"
            parts.append(f"<details>\n<summary>{summary}</summary>\n\n{_quote(reasoning)}\n\n</details>")
        for entry in _tool_entries(message.get("tools")):
            parts.append(_tool_markdown(entry))
        content = message.get("content")
        if isinstance(content, str) and content.strip():
            parts.append(content.strip())
        if message.get("status") == "stopped":
            parts.append("*(stopped)*")
        elif message.get("status") == "error" or message.get("error"):
            parts.append(_quote(f"Error: {message.get('error') or 'the reply failed'}"))
    return "\n\n".join(parts) + "\n"


def _filename(conversation: dict[str, Any], extension: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", conversation.get("title") or "").strip("-").lower()[:60]
    return f"{slug or conversation['id']}.{extension}"


# --- routes ------------------------------------------------------------------------------------------


def _owner(request: Request) -> str:
    """Whose history: each API key has its own; a server without keys has one history for everyone (the
    header a client sends anyway, like the openai SDK's placeholder key, does not split it)."""
    return owner_of(request) if context(request).config.api_keys else ""


@router.get("")
async def list_conversations(
    request: Request,
    q: str | None = Query(None, max_length=1000),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=2**31),
) -> dict:
    store = await conversation_store(request)
    data, more = await store.call(store.summaries, _owner(request), q or None, limit, offset)
    return {"object": "list", "data": data, "has_more": more}


@router.post("", status_code=201)
async def create_conversation(request: Request, body: JsonBody) -> dict:
    conversation = await asyncio.to_thread(parse, body)
    store = await conversation_store(request)
    (stored,) = await store.call(store.create_many, _owner(request), [conversation])
    return stored


def _parse_import(body: Any) -> list[ConversationIn]:
    if isinstance(body, dict) and set(body) == {"conversations"}:
        items = body["conversations"]
        if not isinstance(items, list) or not items:
            raise BadRequest("conversations: a non-empty list of conversations is required", "conversations")
        return [parse(item, f"conversations[{i}].") for i, item in enumerate(items)]
    return [parse(body)]


@router.post("/import", status_code=201)
async def import_conversations(request: Request, body: JsonBody) -> dict:
    """An exported conversation, or `{"conversations": [...]}`; each gets a new id."""
    conversations = await asyncio.to_thread(_parse_import, body)
    store = await conversation_store(request)
    stored = await store.call(store.create_many, _owner(request), conversations)
    summaries = [{key: d[key] for key in ("id", "title", "created", "updated", "mode", "model")}
                 | {"messages": len(d["messages"])} for d in stored]  # fmt: skip
    return {"object": "list", "data": summaries}


@router.get("/{cid}")
async def get_conversation(cid: str, request: Request) -> dict:
    store = await conversation_store(request)
    return await store.call(store.get, _owner(request), cid)


@router.put("/{cid}")
async def put_conversation(cid: str, request: Request, body: JsonBody) -> dict:
    conversation = await asyncio.to_thread(parse, body)
    store = await conversation_store(request)
    return await store.call(store.update, _owner(request), cid, conversation)


@router.delete("/{cid}")
async def delete_conversation(cid: str, request: Request) -> dict:
    store = await conversation_store(request)
    await store.call(store.delete, _owner(request), cid)
    return {"id": cid, "object": "conversation.deleted", "deleted": True}


@router.post("/{cid}/restore")
async def restore_conversation(cid: str, request: Request) -> dict:
    store = await conversation_store(request)
    return await store.call(store.restore, _owner(request), cid)


def _export(conversation: dict[str, Any], format: str) -> tuple[str, str, str]:
    if format == "json":
        return json.dumps(conversation, ensure_ascii=False, indent=2), "application/json", "json"
    return to_markdown(conversation), "text/markdown; charset=utf-8", "md"


@router.get("/{cid}/export")
async def export_conversation(cid: str, request: Request, format: str = Query("json")) -> Response:
    if format not in ("json", "markdown"):
        raise BadRequest(f"format must be json or markdown, got {format!r}", "format")
    store = await conversation_store(request)
    conversation = await store.call(store.get, _owner(request), cid)
    text, media, extension = await asyncio.to_thread(_export, conversation, format)
    disposition = f'attachment; filename="{_filename(conversation, extension)}"'
    return Response(text, media_type=media, headers={"Content-Disposition": disposition})
