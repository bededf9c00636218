"""OpenAI Responses API (/v1/responses): stateful, stored in SQLite under the ossai home."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1")
