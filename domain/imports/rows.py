"""Rows: one data row parsed and validated, share rounding, natural keys, the show_downloads fast path."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from domain.catalog import (
    SHARE_ROUNDING_PER_SHARE,
)
from domain.imports.base import _ID_MAX, _INT_MAX, Header, RowError, _CellError
from domain.imports.cells import _is_empty, _raw
from domain.imports.columns import _MODELS, _Column, _spec
from domain.stages import Stage

# ---------------------------------------------------------------------------------------------
# Rows


def _pydantic_message(error: ErrorDetails) -> str:
    message = str(error.get("msg", "invalid value"))
    if error.get("type") == "string_pattern_mismatch":
        return "has an invalid format"
    return message.removeprefix("Value error, ")


def _plan(kind: str, header: Header) -> _RowPlan:
    """The kind's columns with their cell index in this file, worked out once per header."""
    plan = header.plans.get(kind)
    if plan is None:
        index_of = {name: index for index, name in header.columns.items()}
        plan = _RowPlan(
            columns=tuple((column, index_of.get(column.name)) for column in _spec(kind)),
            index_of=index_of,
        )
        header.plans[kind] = plan
    return plan


@dataclass(frozen=True)
class _RowPlan:
    columns: tuple[tuple[_Column, int | None], ...]
    index_of: dict[str, int]


def parse_row(
    kind: str,
    header: Header,
    cells: Sequence[object],
    row_number: int,
    normalised: list[str] | None = None,
) -> tuple[dict[str, object] | None, list[RowError]]:
    """Parses and validates one data row: (record, []) when good, (None, every error) when not.

    A share map (geo, age) whose sum is over 1 by no more than rounding (catalog.normalise_shares)
    comes back scaled to sum to 1; the names of such columns of a good row are appended to
    `normalised`, so a caller can count the rows and warn once per file (`normalised_warning`).

    Written for speed (a 100,000-row file is 100,000 calls): the column plan is the header's,
    and a cell's display text is worked out only when the row has an error to report.
    """
    plan = _plan(kind, header)
    index_of = plan.index_of
    width = len(cells)
    errors: list[RowError] = []
    record: dict[str, object] = {}
    bad: set[str] = set()
    filled = False
    for column, index in plan.columns:
        cell = cells[index] if index is not None and index < width else None
        if cell is None or (isinstance(cell, str) and (not cell or cell.isspace())):
            if column.required:
                errors.append(RowError(row_number, column.name, None, "a value is required"))
                bad.add(column.name)
            continue
        filled = True
        try:
            record[column.name] = column.parse(cell)
        except _CellError as exc:
            errors.append(RowError(row_number, column.name, _raw(cell), str(exc)))
            bad.add(column.name)
    if not filled and all(_is_empty(c) for c in cells):
        return None, []
    if header.width and width > header.width:
        extra = sum(1 for c in cells[header.width :] if not _is_empty(c))
        if extra:
            errors.insert(
                0,
                RowError(
                    row_number,
                    None,
                    None,
                    f"the row has {extra} more value(s) than the header has columns; "
                    "a value containing the delimiter (e.g. $12,000) must be in double quotes",
                ),
            )

    def raw_of(column: str | None) -> str | None:
        index = index_of.get(column) if column else None
        if index is None or index >= width or _is_empty(cells[index]):
            return None
        return _raw(cells[index])

    def fail(column: str, message: str) -> None:
        errors.append(RowError(row_number, column, raw_of(column), message))
        bad.add(column)

    if kind == "campaigns":
        if "stage" not in bad:
            record.setdefault("stage", Stage.LEAD)
            if record["stage"] is Stage.LOST and not record.get("lost_reason") and "lost_reason" not in bad:
                fail("lost_reason", "a lost_reason is required when the stage is lost")
    elif kind == "show_downloads":
        if "country" not in bad:
            record.setdefault("country", "")
    elif kind == "advertisers":
        start, end = record.get("flight_start"), record.get("flight_end")
        if isinstance(start, date) and isinstance(end, date) and end < start:
            fail("flight_end", f"flight_end {end.isoformat()} is before flight_start {start.isoformat()}")

    model = _MODELS.get(kind)
    if model is not None:
        # Validate what parsed, so one bad cell does not hide the problems of the others.
        candidate = {k: v for k, v in record.items() if k not in bad} if bad else record
        try:
            validated = model.model_validate(candidate)
        except ValidationError as exc:
            for error in exc.errors():
                loc = error.get("loc", ())
                where = str(loc[0]) if loc else None
                if where in bad or error.get("type") == "missing":
                    continue
                errors.append(RowError(row_number, where, raw_of(where), _pydantic_message(error)))
        else:
            adjusted = _take_normalised_shares(record, validated)
            if adjusted and not errors and normalised is not None:
                normalised.extend(adjusted)
    if errors:
        # Left to right as the user sees the sheet; row-level problems first.
        errors.sort(key=lambda e: -1 if e.column is None else index_of.get(e.column, width))
        return None, errors
    return record, []


_SHARE_COLUMNS = ("geo", "age")
_NORMALISED_PREFIX = "shares normalised to 1: "


def _take_normalised_shares(record: dict[str, object], validated: BaseModel) -> list[str]:
    """Replaces each share map that validation scaled to 1 by the scaled one; returns their columns."""
    adjusted: list[str] = []
    for column in _SHARE_COLUMNS:
        shares = record.get(column)
        if not isinstance(shares, dict):
            continue
        checked = getattr(validated, column, shares)
        if checked != shares:
            record[column] = checked
            adjusted.append(column)
    return adjusted


def normalised_warning(rows: int) -> str:
    """The one warning of a file in which `rows` rows had share maps scaled down from rounding."""
    allowed = f"1 + {SHARE_ROUNDING_PER_SHARE} per share listed"
    return (
        f"{_NORMALISED_PREFIX}{rows} row(s) had geo or age shares adding up to a little more than 1 "
        f"(at most {allowed}: rounding); they were scaled down proportionally and stored summing to 1"
    )


def with_normalised_warning(warnings: list[str], rows: int) -> list[str]:
    """`warnings` with the file's normalisation warning saying `rows` (replaced in place, else appended)."""
    if rows <= 0:
        return list(warnings)
    text = normalised_warning(rows)
    out = [text if w.startswith(_NORMALISED_PREFIX) else w for w in warnings]
    if text not in out:
        out.append(text)
    return out


def natural_key(kind: str, record: dict[str, object]) -> tuple[object, ...]:
    """Returns the key that identifies a record across imports (re-importing it updates it)."""
    _spec(kind)
    if kind == "show_downloads":
        return (record["show_external_id"], record["date"], record.get("country") or "")
    if kind == "deliveries":
        # Figures are cumulative: a unit's last row in the file is its delivery to date.
        return (record["io_id"], record["ad_unit_id"])
    return (record["external_id"],)


# ---------------------------------------------------------------------------------------------
# The show_downloads fast path: files of millions of rows are almost all plain rows.

DownloadParser = Callable[[Sequence[object]], "dict[str, object] | None"]


def download_fast_path(header: Header) -> DownloadParser:
    """Returns a parser for plain show_downloads rows that answers None for anything else.

    For a plain text row (ISO date, digits-only count, empty or two-letter country, no extra
    cells) it returns exactly what parse_row would, several times faster; every other row (date
    cells, thousands separators, anything wrong) goes to parse_row, which owns the messages.
    """
    index_of = {name: index for index, name in header.columns.items()}
    i_show = index_of["show_external_id"]
    i_date = index_of["date"]
    i_downloads = index_of["downloads"]
    i_country = index_of.get("country")
    width = header.width or (max(header.columns) + 1)
    fromisoformat = date.fromisoformat

    def parse(cells: Sequence[object]) -> dict[str, object] | None:
        if len(cells) > width:
            return None
        try:
            show, day, count = cells[i_show], cells[i_date], cells[i_downloads]
            country = cells[i_country] if i_country is not None and i_country < len(cells) else ""
        except IndexError:
            return None
        if not (isinstance(show, str) and isinstance(day, str) and isinstance(count, str)):
            return None
        if not isinstance(country, str):
            return None
        show = show.strip()
        if (
            not show
            or len(show) > _ID_MAX
            or len(day) != 10
            or not day.isascii()
            or day[4] != "-"
            or day[7] != "-"
        ):
            return None
        if not (count.isascii() and count.isdigit()):
            return None
        value = int(count)
        if value > _INT_MAX:
            return None
        country = country.strip()
        if country and not (len(country) == 2 and country.isascii() and country.isalpha()):
            return None
        try:
            when = fromisoformat(day)
        except ValueError:
            return None
        return {"show_external_id": show, "date": when, "downloads": value, "country": country.upper()}

    return parse
