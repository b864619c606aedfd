"""In-file repeats of shows and advertisers across chunk commits: the last row wins, each is warned once.

The import stages chunk k+1 while chunk k merges (not committed yet), so a key shared by two
adjacent chunks is found in memory and one shared with an earlier, committed chunk in the
database: both must be reported, and neither may change the counts or the winner.
"""

from __future__ import annotations

import pytest

from tests.conftest import Stack
from tests.helpers.imports import upload


def _file(kind: str, rows: list[tuple[str, str]]) -> bytes:
    if kind == "shows":
        lines = ["external_id,name,avg_downloads", *(f"{k},{n},1000" for k, n in rows)]
    else:
        lines = ["external_id,name", *(f"{k},{n}" for k, n in rows)]
    return ("\n".join(lines) + "\n").encode()


# Chunks of three: x-1 repeats in the very next chunk (still merging when that one is staged),
# x-2 three chunks later (long committed).
ROWS = [
    ("x-1", "First 1"),
    ("x-2", "First 2"),
    ("x-3", "Three"),
    ("x-4", "Four"),
    ("x-1", "Second 1"),
    ("x-5", "Five"),
    ("x-6", "Six"),
    ("x-7", "Seven"),
    ("x-8", "Eight"),
    ("x-2", "Second 2"),
    ("x-9", "Nine"),
]


@pytest.mark.parametrize("kind", ["shows", "advertisers"])
async def test_repeats_in_adjacent_and_distant_chunks_are_warned_and_the_last_row_wins(
    small_chunk_stack: Stack, kind: str
) -> None:
    stack = small_chunk_stack
    t = await stack.new_tenant()
    h = stack.auth(t)
    status = await upload(stack, h, kind, f"{kind}.csv", _file(kind, ROWS))
    assert status["status"] == "completed", status
    counts = [status[f"rows_{c}"] for c in ("processed", "inserted", "updated", "failed")]
    assert counts == [11, 9, 2, 0], status
    repeats = sorted(w for w in status["warnings"] if "appears more than once" in w)
    assert repeats == [
        "x-1 appears more than once in the file: the last row wins",
        "x-2 appears more than once in the file: the last row wins",
    ], status["warnings"]

    items = (await stack.http.get(f"/api/v1/{kind}", params={"limit": 50}, headers=h)).json()["items"]
    names = {i["external_id"]: i["name"] for i in items}
    assert len(names) == 9
    assert names["x-1"] == "Second 1" and names["x-2"] == "Second 2" and names["x-9"] == "Nine"

    # Rows another import wrote are updates, not repeats.
    again = await upload(stack, h, kind, f"{kind}-again.csv", _file(kind, ROWS[:6]))
    assert (again["rows_inserted"], again["rows_updated"]) == (0, 6), again  # x-1 written twice
    assert [w for w in again["warnings"] if "appears more than once" in w] == [
        "x-1 appears more than once in the file: the last row wins"
    ], again["warnings"]
