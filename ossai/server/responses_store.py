"""SQLite store of stateful Responses API responses (`OSSAI_HOME/responses.db`).

Each stored response keeps its JSON and the full item list it was generated from (earlier inputs and
outputs plus the new input), so `previous_response_id` needs one lookup and a chain survives both a
restart and the deletion of earlier responses. That costs space quadratic in a chain's length, which is
fine for local use.

The schema changes only through `MIGRATIONS`, functions applied in order and recorded by name in
`_migrations` (as simonw/llm does). Every call opens its own short-lived connection (WAL, so readers never
wait on a writer) and the async methods run them in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []
BUSY_TIMEOUT_S = 10.0  # how long a writer waits for another writer's lock


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_responses(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE responses (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            model TEXT NOT NULL,
            previous_response_id TEXT,
            response TEXT NOT NULL,      -- the Response object, as JSON
            input_items TEXT NOT NULL    -- JSON list: every item the response was generated from
        )"""
    )


@dataclass(slots=True)
class StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """The items a follow-up turn continues from: this response's inputs, then its outputs."""
        return [*self.input_items, *self.response["output"]]


class ResponseStore:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            migrate(db)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    # Synchronous API (each call is one short transaction) ---------------------------------------------

    def save_sync(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        row = (
            response["id"],
            response.get("created_at") or time.time(),
            response["model"],
            response.get("previous_response_id"),
            json.dumps(response, ensure_ascii=False),
            json.dumps(input_items, ensure_ascii=False),
        )
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)", row)

    def get_sync(self, response_id: str) -> StoredResponse | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT response, input_items FROM responses WHERE id = ?", (response_id,)
            ).fetchone()
        return None if row is None else StoredResponse(json.loads(row[0]), json.loads(row[1]))

    def delete_sync(self, response_id: str) -> bool:
        with self._connect() as db:
            return db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    # Async API for the server ------------------------------------------------------------------------

    async def save(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self.save_sync, response, input_items)

    async def get(self, response_id: str) -> StoredResponse | None:
        return await asyncio.to_thread(self.get_sync, response_id)

    async def delete(self, response_id: str) -> bool:
        return await asyncio.to_thread(self.delete_sync, response_id)


def migrate(db: sqlite3.Connection) -> None:
    """Apply the migrations not yet recorded, each in its own transaction, in order."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    for fn in MIGRATIONS:
        db.execute("BEGIN IMMEDIATE")  # serializes concurrent starters: one applies, the others see it
        try:
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", (fn.__name__,)).fetchone():
                db.execute("COMMIT")
                continue
            fn(db)
            db.execute("INSERT INTO _migrations VALUES (?, ?)", (fn.__name__, time.time()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
