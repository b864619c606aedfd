"""Opaque cursors for keyset paging: every list answers {items, next_cursor}."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select, and_, or_

from api import errors

T = TypeVar("T")

LimitParam = Annotated[int, Query(ge=1, le=200, description="page size")]
CursorParam = Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")]


class Page(BaseModel, Generic[T]):
    """One page of a list."""

    items: list[T]
    next_cursor: str | None = None


def encode_cursor(values: dict[str, Any]) -> str:
    """Encodes the last row's sort key as an opaque string."""
    return base64.urlsafe_b64encode(json.dumps(values, default=str).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """Decodes a cursor made by encode_cursor; 422 naming `cursor` when it is not one."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
        if not isinstance(values, dict) or set(values) != set(keys):
            raise ValueError
        return values
    except ValueError:
        raise errors.unprocessable(["query", "cursor"], "not a cursor this list returned") from None


def newest_first(stmt: Select[Any], model: Any, cursor: str | None, limit: int) -> Select[Any]:
    """Orders by (created_at, id) descending and starts after the cursor; fetches limit+1 rows."""
    stmt = stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    after = decode_cursor(cursor, ("t", "id"))
    if after is None:
        return stmt
    try:
        t, last = datetime.fromisoformat(str(after["t"])), uuid.UUID(str(after["id"]))
    except ValueError:
        raise errors.malformed_cursor() from None
    return stmt.where(or_(model.created_at < t, and_(model.created_at == t, model.id < last)))


def newest_next_cursor(rows: Sequence[Any], limit: int) -> str | None:
    """The cursor after a newest_first page, or None on the last page."""
    if len(rows) <= limit:
        return None
    last = rows[limit - 1]
    return encode_cursor({"t": last.created_at.isoformat(), "id": str(last.id)})
