"""Opaque cursors for keyset paging: every list answers {items, next_cursor}."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any, Generic, TypeVar

from fastapi import HTTPException, Query, status
from pydantic import BaseModel

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
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail="cursor: not a cursor this list returned"
        ) from None
