"""Spreadsheet imports (ARCHITECTURE section 10): streaming CSV/XLSX reading, cell parsing, row validation.

Pure code: no database, no I/O beyond the bytes or workbook handed in. A caller does

    fmt = sniff_format(first_bytes, filename)
    header_cells, rows, warnings = iter_csv_rows(chunks)  # or iter_xlsx_rows(file)
    header = read_header(kind, header_cells)
    for row_number, cells in rows:
        record, errors = parse_row(kind, header, cells, row_number)

Decisions a caller relies on:

* Encoding (CSV). Bytes are decoded as UTF-8 (a UTF-8 BOM is stripped). If the first 64 KiB are not
  valid UTF-8 the whole file is read as Windows-1252 and the warning
  "file is not valid UTF-8 (first bad byte at offset N); read as Windows-1252" is added. A bad byte
  further on still switches to Windows-1252 when everything before it was plain ASCII (ASCII reads the
  same either way, so this equals reading the whole file as Windows-1252); the warning is then appended
  to the same `warnings` list while the rows are iterated, so read that list again after the loop. A bad
  byte after non-ASCII UTF-8 text means a file mixing two encodings: the rows iterator raises FileError
  "file is not valid UTF-8 text: undecodable byte 0x.. at offset N; save it as UTF-8 CSV".
* Empty and header-only files are detected eagerly: `iter_csv_rows` / `iter_xlsx_rows` raise
  FileError("the file is empty") or FileError("the file has a header but no data rows") before they
  return, so callers need no extra check.
* The rows iterators may still raise FileError while iterated (malformed CSV quoting, encoding, a
  corrupt workbook part): everything read before that point was valid and came out in order.
* Row numbers are what a spreadsheet user sees: the header is the first non-empty row (normally row 1)
  and every record counts, blank ones included; a quoted CSV field spanning lines is still one row.
  Completely empty rows are skipped by the iterators (and `parse_row` returns (None, []) for them).
* XLSX: first worksheet, cached formula results (`data_only`), values beyond the header's last column
  are dropped (a stray note in an unlabelled column is ignored like an unknown column). In a CSV such
  values make the row an error instead, because there they usually come from an unquoted delimiter
  (`$12,000` in a comma-separated file). The XLSX rows iterator releases the workbook when exhausted,
  on `close()`, or when dropped.
* Record values are plain types: str, int, float (shares), Decimal (money, 2 places, rounded half-up),
  datetime.date, list[str], dict[str, float] (geo, age), and StrEnum members (stage, tolerance,
  brand_safety levels) that compare equal to their strings. Empty optional cells are left out of the
  record, except `stage` (defaults to "lead") and show_downloads `country` (defaults to "").
"""

from __future__ import annotations

import codecs
import csv
import math
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from itertools import chain
from typing import IO, Any

import openpyxl
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from domain.catalog import (
    AGE_BANDS,
    GARM_CATEGORIES,
    SHARE_ROUNDING_PER_SHARE,
    AdvertiserFields,
    RiskLevel,
    ShowFields,
    Tolerance,
)
from domain.stages import Stage

KINDS: tuple[str, ...] = ("shows", "advertisers", "campaigns", "show_downloads", "deliveries")

EMPTY_FILE = "the file is empty"
NO_DATA_ROWS = "the file has a header but no data rows"
NOT_A_SPREADSHEET = "not a CSV or XLSX file"

# Enough to see the header and, in practice, a fair share of the rows before committing to an encoding.
SNIFF_BYTES = 64 * 1024
_VALUE_CHARS = 200
_ID_MAX = 200  # matches catalog.ExternalId
_NAME_MAX = 300
_TEXT_MAX = 2000
_EMAIL_MAX = 320
# Fits a PostgreSQL integer column; no real download count comes near it.
_INT_MAX = 2**31 - 1
_MONEY_MAX = Decimal("999999999999.99")
_CENT = Decimal("0.01")

_BOM = codecs.BOM_UTF8
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class RowError:
    """One problem in one row: where it is, the cell text and what is wrong, in plain words."""

    row_number: int
    column: str | None
    value: str | None
    message: str


class FileError(Exception):
    """The whole file is unusable; str(exc) tells a person why."""


@dataclass(frozen=True)
class Header:
    """How the columns of a file map to the canonical columns of an import kind."""

    columns: dict[int, str]
    warnings: list[str] = field(default_factory=list)
    # Number of header cells; a CSV row with non-empty cells beyond it is reported (0: no check).
    width: int = 0
    # parse_row's column plan per kind, worked out on first use.
    plans: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


class _CellError(ValueError):
    """A cell that cannot be parsed; the message is shown to the user as is."""


# ---------------------------------------------------------------------------------------------
# Spreadsheet safety


def neutralise(text: str) -> str:
    """Returns text safe to put in an exported spreadsheet cell: formula-looking text gets a leading quote."""
    # Only for text cells: a number written as a number is never interpreted as a formula.
    if text.startswith(_FORMULA_PREFIXES):
        return "'" + text
    return text


# ---------------------------------------------------------------------------------------------
# Cell helpers


def _is_empty(cell: object) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip())


def _display(cell: object) -> str:
    """The text of a cell as a user would recognise it."""
    if isinstance(cell, datetime):
        if cell.hour == cell.minute == cell.second == cell.microsecond == 0:
            return cell.date().isoformat()
        return cell.isoformat(sep=" ")
    if isinstance(cell, date):
        return cell.isoformat()
    if isinstance(cell, bool):
        return "TRUE" if cell else "FALSE"
    if isinstance(cell, float) and cell.is_integer():
        # An id typed into a numeric XLSX cell comes back as 1001.0; the user typed 1001.
        return str(int(cell))
    return str(cell)


def _raw(cell: object) -> str:
    return _display(cell)[:_VALUE_CHARS]


def _text_of(cell: object) -> str:
    return cell.strip() if isinstance(cell, str) else _display(cell).strip()


def _is_number(cell: object) -> bool:
    return isinstance(cell, int | float) and not isinstance(cell, bool)


def _quote(text: str) -> str:
    return repr(text[:_VALUE_CHARS])


# ---------------------------------------------------------------------------------------------
# Cell parsers: each takes a non-empty cell and returns the parsed value or raises _CellError.

CellParser = Callable[[object], object]


def _text(max_len: int) -> CellParser:
    def parse(cell: object) -> object:
        text = _text_of(cell)
        if len(text) > max_len:
            raise _CellError(f"too long: {len(text)} characters, at most {max_len}")
        return text

    return parse


_INT_RE = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.0*)?$")
# 85.000 is 85 to a program and 85000 to a European reader: refuse to guess.
_AMBIGUOUS_THOUSANDS = re.compile(r"^[+-]?[1-9]\d{0,2}(?:\.\d{3})+$")


def _int(cell: object) -> object:
    if _is_number(cell):
        assert isinstance(cell, int | float)
        if isinstance(cell, float) and not (math.isfinite(cell) and cell.is_integer()):
            raise _CellError(f"not a whole number: {_display(cell)!r}")
        value = int(cell)
    else:
        text = _text_of(cell)
        if _AMBIGUOUS_THOUSANDS.match(text):
            raise _CellError(f"ambiguous number {text!r}: write it without thousands dots, e.g. 85000")
        if not _INT_RE.match(text):
            raise _CellError(f"not a whole number: {_quote(text)}")
        value = int(text.replace(",", "").split(".")[0])
    if value < 0:
        raise _CellError(f"must not be negative: {_display(cell)!r}")
    if value > _INT_MAX:
        raise _CellError(f"too large: {_display(cell)!r}")
    return value


_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def _uuid(cell: object) -> object:
    text = _text_of(cell)
    if not _UUID_RE.match(text):
        raise _CellError(f"not an id as the API returns it (a UUID): {_quote(text)}")
    return (
        text.lower()
        if "-" in text
        else "-".join((text[:8], text[8:12], text[12:16], text[16:20], text[20:])).lower()
    )


_MONEY_NUMBER = re.compile(r"^(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?$")
_OTHER_CURRENCY = re.compile(r"[€£¥₹]|\b(?:EUR|GBP|CAD|AUD|JPY|CHF|INR)\b", re.IGNORECASE)
_USD_PREFIX = re.compile(r"^(?:US\$|\$|USD)\s*", re.IGNORECASE)
_USD_SUFFIX = re.compile(r"\s*(?:USD|US\$|\$)$", re.IGNORECASE)


def _money(cell: object) -> object:
    if _is_number(cell):
        assert isinstance(cell, int | float)
        if isinstance(cell, float) and not math.isfinite(cell):
            raise _CellError(f"not an amount: {_display(cell)!r}")
        # repr() gives the shortest text that round-trips, so 0.1 stays 0.1 rather than 0.1000000000000000055.
        amount = Decimal(repr(cell)) if isinstance(cell, float) else Decimal(cell)
    else:
        text = _text_of(cell)
        if _OTHER_CURRENCY.search(text):
            raise _CellError(f"only US dollar amounts are accepted: {_quote(text)}")
        body = text
        negative = False
        if body.startswith("(") and body.endswith(")"):  # accounting notation for negatives
            negative, body = True, body[1:-1].strip()
        if body.startswith(("+", "-")):
            negative, body = negative or body[0] == "-", body[1:].strip()
        body = _USD_SUFFIX.sub("", _USD_PREFIX.sub("", body, count=1), count=1)
        if body.startswith(("+", "-")):  # "$-5"
            negative, body = negative or body[0] == "-", body[1:].strip()
        if not body or not _MONEY_NUMBER.match(body) or not any(c.isdigit() for c in body):
            raise _CellError(f"not an amount: {_quote(text)} (write e.g. 12000, 12000.50 or $12,000)")
        try:
            amount = Decimal(body.replace(",", ""))
        except InvalidOperation as exc:  # pragma: no cover - the pattern already excludes this
            raise _CellError(f"not an amount: {_quote(text)}") from exc
        if negative and amount != 0:
            amount = -amount
    if amount < 0:
        raise _CellError(f"must not be negative: {_display(cell)!r}")
    amount = amount.quantize(_CENT, rounding=ROUND_HALF_UP)
    if amount > _MONEY_MAX:
        raise _CellError(f"too large: {_display(cell)!r}")
    return amount


# pandas and some exports write dates as datetimes at midnight; accept that, nothing looser.
_DATE_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[T ]00:00(?::00(?:\.0+)?)?)?$")


def _date(cell: object) -> object:
    if isinstance(cell, datetime):
        return cell.date()
    if isinstance(cell, date):
        return cell
    if _is_number(cell):
        raise _CellError(f"not a date: {_display(cell)!r} (the cell holds a number; format it as a date)")
    text = _text_of(cell)
    match = _DATE_RE.match(text)
    if not match:
        raise _CellError(f"not a date: {_quote(text)} (expected YYYY-MM-DD, e.g. 2024-03-31)")
    try:
        return date.fromisoformat(match.group(1))
    except ValueError as exc:
        raise _CellError(f"not a valid date: {_quote(text)}") from exc


_SHARE_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(%?)$")


def _share_value(text: str) -> float:
    match = _SHARE_RE.match(text)
    if not match:
        raise _CellError(f"not a share: {_quote(text)} (write a fraction like 0.45 or a percent like 45%)")
    value = Decimal(match.group(1))
    if match.group(2):
        value /= 100
    elif value > 1:
        raise _CellError(f"share must be between 0 and 1: {_quote(text)} (for a percent write {text}%)")
    if value > 1:
        raise _CellError(f"share must be between 0% and 100%: {_quote(text)}")
    return float(value)


def _share(cell: object) -> object:
    if _is_number(cell):
        assert isinstance(cell, int | float)
        value = float(cell)
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise _CellError(f"share must be between 0 and 1: {_display(cell)!r}")
        return value
    return _share_value(_text_of(cell))


def _items(cell: object) -> list[str]:
    seen: dict[str, None] = {}
    for item in _text_of(cell).split(";"):
        item = item.strip()
        if item:
            seen.setdefault(item)
    return list(seen)


def _country_code(text: str) -> str:
    code = text.strip().upper()
    if not re.fullmatch(r"[A-Z]{2}", code):
        raise _CellError(f"not an ISO 3166-1 alpha-2 country code (like US or GB): {_quote(text)}")
    return code


def _age_band(text: str) -> str:
    # Excel autocorrects 18-24 into an en dash; spaces around the dash are common too.
    band = re.sub(r"\s+", "", text).replace("\u2013", "-").replace("\u2014", "-")
    if band not in AGE_BANDS:
        raise _CellError(f"unknown age band {text!r}; expected one of {', '.join(AGE_BANDS)}")
    return band


def _list_of(item: Callable[[str], str] | None) -> CellParser:
    def parse(cell: object) -> object:
        values: list[str] = []
        problems: list[str] = []
        for raw in _items(cell):
            try:
                value = item(raw) if item else raw
            except _CellError as exc:
                problems.append(str(exc))
                continue
            if value not in values:
                values.append(value)
        if problems:
            raise _CellError("; ".join(problems))
        return values

    return parse


def _pairs(cell: object) -> Iterator[tuple[str, str]]:
    for raw in _items(cell):
        key, sep, value = raw.partition(":")
        if not sep or not key.strip() or not value.strip():
            raise _CellError(f"expected key:value pairs separated by ';', e.g. US:0.62;GB:0.2; got {raw!r}")
        yield key.strip(), value.strip()


def _distribution(key_of: Callable[[str], str]) -> CellParser:
    def parse(cell: object) -> object:
        shares: dict[str, float] = {}
        problems: list[str] = []
        for raw_key, raw_share in _pairs(cell):
            try:
                key = key_of(raw_key)
                share = _share_value(raw_share)
            except _CellError as exc:
                problems.append(str(exc))
                continue
            if key in shares:
                problems.append(f"{key} appears more than once")
            shares[key] = share
        if problems:
            raise _CellError("; ".join(problems))
        return shares

    return parse


_RISK_NAMES = ", ".join(level.value for level in RiskLevel)


def _brand_safety(cell: object) -> object:
    risks: dict[str, RiskLevel] = {}
    problems: list[str] = []
    for raw_category, raw_level in _pairs(cell):
        category = raw_category.lower()
        if category not in GARM_CATEGORIES:
            problems.append(f"unknown GARM category {raw_category!r}")
            continue
        try:
            level = RiskLevel(raw_level.lower())
        except ValueError:
            problems.append(f"unknown risk level {raw_level!r} for {category}; expected {_RISK_NAMES}")
            continue
        if category in risks:
            problems.append(f"{category} appears more than once")
        risks[category] = level
    if problems:
        raise _CellError("; ".join(problems))
    return risks


def _tolerance(cell: object) -> object:
    text = _text_of(cell)
    try:
        return Tolerance(text.lower())
    except ValueError:
        names = ", ".join(t.value for t in Tolerance)
        raise _CellError(f"unknown tolerance {_quote(text)}; expected {names}") from None


_GENDERS = {"female": "female", "f": "female", "women": "female", "male": "male", "m": "male", "men": "male"}


def _gender(cell: object) -> object:
    text = _text_of(cell).lower()
    if text not in _GENDERS:
        raise _CellError(f"unknown gender target {_quote(text)}; expected female or male (or leave it empty)")
    return _GENDERS[text]


def _stage(cell: object) -> object:
    text = _text_of(cell)
    try:
        return Stage(text.lower())
    except ValueError:
        names = ", ".join(s.value for s in Stage)
        raise _CellError(f"unknown stage {_quote(text)}; expected {names}") from None


def _country(cell: object) -> object:
    return _country_code(_text_of(cell))


_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")


def _email(cell: object) -> object:
    text = _text_of(cell)
    if len(text) > _EMAIL_MAX or not _EMAIL_RE.match(text):
        raise _CellError(f"not an email address: {_quote(text)}")
    return text


_URL_RE = re.compile(r"^https?://\S+$", re.IGNORECASE)


def _url(cell: object) -> object:
    text = _text_of(cell)
    if len(text) > _TEXT_MAX:
        raise _CellError(f"too long: {len(text)} characters, at most {_TEXT_MAX}")
    if not _URL_RE.match(text):
        raise _CellError(f"not an http(s) URL: {_quote(text)}")
    return text


_DOMAIN_RE = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def _domain(cell: object) -> object:
    text = _text_of(cell)
    # People paste the website address; the domain is what is meant.
    name = re.sub(r"^[a-z][a-z0-9+.-]*://", "", text.lower()).split("/", 1)[0].rstrip(".")
    if len(name) > 253 or not _DOMAIN_RE.match(name):
        raise _CellError(f"not a domain name like acme.com: {_quote(text)}")
    return name


# ---------------------------------------------------------------------------------------------
# Column specs per kind


@dataclass(frozen=True)
class _Column:
    name: str
    parse: CellParser
    required: bool = False


_SPECS: dict[str, tuple[_Column, ...]] = {
    "shows": (
        _Column("external_id", _text(_ID_MAX), required=True),
        _Column("name", _text(_NAME_MAX), required=True),
        _Column("categories", _list_of(None)),
        _Column("avg_downloads", _int, required=True),
        _Column("episodes_per_month", _int),
        _Column("cpm_usd", _money),
        _Column("geo", _distribution(_country_code)),
        _Column("age", _distribution(_age_band)),
        _Column("female_share", _share),
        _Column("brand_safety", _brand_safety),
        _Column("rss_url", _url),
    ),
    "advertisers": (
        _Column("external_id", _text(_ID_MAX), required=True),
        _Column("name", _text(_NAME_MAX), required=True),
        _Column("domain", _domain),
        _Column("target_categories", _list_of(None)),
        _Column("target_geo", _list_of(_country_code)),
        _Column("target_age", _list_of(_age_band)),
        _Column("brand_safety_tolerance", _tolerance),
        _Column("target_gender", _gender),
        _Column("budget_usd", _money),
        _Column("flight_start", _date),
        _Column("flight_end", _date),
    ),
    "campaigns": (
        _Column("external_id", _text(_ID_MAX), required=True),
        _Column("advertiser_external_id", _text(_ID_MAX), required=True),
        _Column("show_external_id", _text(_ID_MAX)),
        _Column("name", _text(_NAME_MAX), required=True),
        _Column("value_usd", _money, required=True),
        _Column("stage", _stage),
        _Column("expected_close", _date),
        _Column("lost_reason", _text(_TEXT_MAX)),
        _Column("owner_email", _email),
    ),
    "show_downloads": (
        _Column("show_external_id", _text(_ID_MAX), required=True),
        _Column("date", _date, required=True),
        _Column("downloads", _int, required=True),
        _Column("country", _country),
    ),
    # Delivered impressions to date per ad unit: each row is sent to its IO's workflow.
    "deliveries": (
        _Column("io_id", _uuid, required=True),
        _Column("ad_unit_id", _uuid, required=True),
        _Column("impressions", _int, required=True),
        _Column("source", _text(200)),
    ),
}

_MODELS: dict[str, type[BaseModel]] = {"shows": ShowFields, "advertisers": AdvertiserFields}


def _spec(kind: str) -> tuple[_Column, ...]:
    try:
        return _SPECS[kind]
    except KeyError:
        raise ValueError(f"unknown import kind {kind!r}; expected one of {', '.join(KINDS)}") from None


def columns_of(kind: str) -> tuple[tuple[str, bool], ...]:
    """Returns the (column name, required) pairs of an import kind, in documented order."""
    return tuple((c.name, c.required) for c in _spec(kind))


# ---------------------------------------------------------------------------------------------
# Header


def _canonical(cell: object) -> str:
    # Beyond case and surrounding spaces: "External ID" and a copied "external_id*" mean the obvious.
    text = _text_of(cell).lower().rstrip("*").strip()
    return re.sub(r"[\s-]+", "_", text)


def read_header(kind: str, cells: Sequence[object]) -> Header:
    """Maps header cells to the kind's columns; raises FileError for missing required or duplicate columns."""
    spec = _spec(kind)
    known = {c.name for c in spec}
    columns: dict[int, str] = {}
    seen: dict[str, int] = {}
    unknown: list[str] = []
    for index, cell in enumerate(cells):
        if _is_empty(cell):
            continue
        name = _canonical(cell)
        if name not in known:
            unknown.append(_text_of(cell))
            continue
        if name in seen:
            raise FileError(
                f"column {name} appears more than once (columns {seen[name] + 1} and {index + 1})"
            )
        seen[name] = index
        columns[index] = name
    missing = [c.name for c in spec if c.required and c.name not in seen]
    if missing:
        message = f"missing required columns: {', '.join(missing)}"
        if not columns:
            message += "; the first row must hold the column names"
        raise FileError(message)
    warnings = [f"ignored unknown columns: {', '.join(unknown)}"] if unknown else []
    return Header(columns=columns, warnings=warnings, width=len(cells))


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
        if cell is None or (cell.__class__ is str and (not cell or cell.isspace())):  # type: ignore[union-attr]
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
# File format detection

_OLE_HINT = " (it looks like an old .xls workbook or an encrypted file; save it as .xlsx or CSV)"
_UTF16_HINT = " (it is UTF-16 text; save it as UTF-8 CSV)"
_BINARY_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", _OLE_HINT),
    (b"\xff\xfe", _UTF16_HINT),
    (b"\xfe\xff", _UTF16_HINT),
    (b"PK\x05\x06", ""),
    (b"PK\x07\x08", ""),
    (b"\x89PNG", ""),
    (b"GIF8", ""),
    (b"\xff\xd8\xff", ""),
    (b"%PDF", ""),
    (b"\x1f\x8b", ""),
    (b"7z\xbc\xaf", ""),
    (b"Rar!", ""),
)
_CONTROL = frozenset(range(32)) - {9, 10, 12, 13}


def _check_text(head: bytes) -> None:
    """Raises FileError when the first bytes of a file are clearly not text."""
    for magic, hint in _BINARY_MAGIC:
        if head.startswith(magic):
            raise FileError(NOT_A_SPREADSHEET + hint)
    if b"\x00" in head:
        raise FileError(NOT_A_SPREADSHEET)
    sample = head[:4096]
    # A few stray control characters happen in real exports; a lot of them means binary data.
    if sample and sum(1 for b in sample if b in _CONTROL) > max(4, len(sample) // 50):
        raise FileError(NOT_A_SPREADSHEET)


def sniff_format(first_bytes: bytes, filename: str) -> str:
    """Returns "csv" or "xlsx" from the first bytes (content decides; the filename only helps messages)."""
    if first_bytes.startswith(b"PK\x03\x04"):
        return "xlsx"
    if not first_bytes.removeprefix(_BOM).strip():
        raise FileError(EMPTY_FILE)
    try:
        _check_text(first_bytes)
    except FileError as exc:
        if str(exc) == NOT_A_SPREADSHEET and filename.lower().endswith((".xls", ".xlsx", ".xlsm")):
            raise FileError(f"{NOT_A_SPREADSHEET} ({filename} is not a readable workbook)") from None
        raise
    return "csv"


# ---------------------------------------------------------------------------------------------
# CSV


class _Decoder:
    """UTF-8 with the Windows-1252 fallback described in the module docstring."""

    def __init__(self, warnings: list[str], offset: int) -> None:
        self.warnings = warnings
        self.offset = offset  # absolute file offset of the first byte not yet decoded
        self.pending = b""
        self.encoding = "utf-8"
        self.ascii_so_far = True

    def decode(self, chunk: bytes, final: bool = False) -> str:
        data = self.pending + chunk
        self.pending = b""
        if self.encoding == "cp1252":
            self.offset += len(data)
            return data.decode("cp1252", errors="replace")
        try:
            text, used = codecs.utf_8_decode(data, "strict", final)
        except UnicodeDecodeError as exc:
            bad = self.offset + exc.start
            if not self.ascii_so_far:
                raise FileError(
                    f"file is not valid UTF-8 text: undecodable byte 0x{data[exc.start]:02x} "
                    f"at offset {bad}; save it as UTF-8 CSV"
                ) from None
            self.encoding = "cp1252"
            self.warnings.append(
                f"file is not valid UTF-8 (first bad byte at offset {bad}); read as Windows-1252"
            )
            self.offset += len(data)
            return data.decode("cp1252", errors="replace")
        self.pending = data[used:]
        self.offset += used
        if self.ascii_so_far and not text.isascii():
            self.ascii_so_far = False
        return text


_EOL = re.compile(r"\r\n|\r|\n")


def _physical_lines(texts: Iterable[str]) -> Iterator[str]:
    """Splits decoded text pieces into lines that keep their line ending, as csv.reader expects."""
    parts: list[str] = []
    held_cr = False  # the previous piece ended in "\r", possibly the first half of "\r\n"
    for text in texts:
        if not text:
            continue
        start = 0
        if held_cr:
            held_cr = False
            if text[0] == "\n":
                parts.append("\n")
                start = 1
            yield "".join(parts)
            parts = []
        for match in _EOL.finditer(text, start):
            end = match.end()
            if end == len(text) and match.group() == "\r":
                held_cr = True
                parts.append(text[start:end])
                start = end
                break
            parts.append(text[start:end])
            yield "".join(parts)
            parts = []
            start = end
        if start < len(text):
            parts.append(text[start:])
    if parts:
        yield "".join(parts)


def _delimiter(line: str) -> str:
    """Picks comma, semicolon or tab: whichever occurs most often outside quotes in the header line."""
    counts = {",": 0, ";": 0, "\t": 0}
    quoted = False
    for char in line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(counts, key=lambda d: counts[d])  # ties keep the earlier one, comma first
    return best if counts[best] else ","


def iter_csv_rows(
    chunks: Iterable[bytes],
) -> tuple[list[str], Iterator[tuple[int, list[str]]], list[str]]:
    """Streams a CSV from byte chunks: (header cells, iterator of (row number, cells), warnings)."""
    source = iter(chunks)
    head = bytearray()
    for chunk in source:
        head += chunk
        if len(head) >= SNIFF_BYTES:
            break
    head_bytes = bytes(head)
    offset = 0
    if head_bytes.startswith(_BOM):
        head_bytes, offset = head_bytes[len(_BOM) :], len(_BOM)
    if not head_bytes.strip():
        raise FileError(EMPTY_FILE)
    if head_bytes.startswith(b"PK\x03\x04"):
        raise FileError(NOT_A_SPREADSHEET + " (it is a ZIP archive or XLSX workbook, read it as XLSX)")
    _check_text(head_bytes)

    warnings: list[str] = []
    decoder = _Decoder(warnings, offset)

    def texts() -> Iterator[str]:
        yield decoder.decode(head_bytes)
        for chunk in source:
            start = decoder.offset + len(decoder.pending)
            if b"\x00" in chunk:
                at = start + chunk.index(b"\x00")
                raise FileError(f"{NOT_A_SPREADSHEET}: NUL byte at offset {at}")
            yield decoder.decode(chunk)
        yield decoder.decode(b"", final=True)

    lines = _physical_lines(texts())
    leading: list[str] = []
    for line in lines:
        leading.append(line)
        if line.strip():
            break
    if not any(line.strip() for line in leading):
        raise FileError(EMPTY_FILE)
    reader = csv.reader(
        chain(leading, lines),
        delimiter=_delimiter(leading[-1]),
        quotechar='"',
        doublequote=True,
        skipinitialspace=True,
        # strict: an unmatched quote would otherwise swallow the rest of the file into one cell.
        strict=True,
    )
    records = enumerate(reader, start=1)

    def next_row(after: int) -> tuple[int, list[str]] | None:
        number = after
        try:
            for number, cells in records:
                # CSV cells are all text: one join tells a blank row from a real one.
                if "".join(cells).strip():
                    return number, cells
        except csv.Error as exc:
            raise FileError(
                f"row {number + 1}: malformed CSV ({exc}); check for an unmatched double quote"
            ) from None
        return None

    first = next_row(0)
    if first is None:
        raise FileError(EMPTY_FILE)
    header_number, header = first
    data = next_row(header_number)
    if data is None:
        raise FileError(NO_DATA_ROWS)

    def rows(current: tuple[int, list[str]]) -> Iterator[tuple[int, list[str]]]:
        row: tuple[int, list[str]] | None = current
        while row is not None:
            yield row
            row = next_row(row[0])

    return header, rows(data), warnings


# ---------------------------------------------------------------------------------------------
# XLSX

XlsxSource = str | os.PathLike[str] | IO[bytes]


def iter_xlsx_rows(
    path_or_file: XlsxSource,
) -> tuple[list[object], Iterator[tuple[int, list[object]]], list[str]]:
    """Streams the first worksheet of an XLSX: (header cells, iterator of (row number, cells), warnings)."""
    owned: IO[bytes] | None = None
    if isinstance(path_or_file, str | os.PathLike):
        # Opened here because openpyxl refuses paths whose extension is not .xlsx (uploads are temp files).
        owned = open(path_or_file, "rb")  # closed by the rows iterator
        stream: IO[bytes] = owned
    else:
        stream = path_or_file
    workbook: Any = None

    def close() -> None:
        if workbook is not None:
            workbook.close()
        if owned is not None:
            owned.close()

    try:
        magic = stream.read(4)
        stream.seek(0)
        if not magic:
            raise FileError(EMPTY_FILE)
        if magic != b"PK\x03\x04":
            raise FileError(NOT_A_SPREADSHEET)
        try:
            workbook = openpyxl.load_workbook(stream, read_only=True, data_only=True)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise FileError(NOT_A_SPREADSHEET) from exc
        except Exception as exc:  # openpyxl raises many kinds for damaged parts
            raise FileError(
                f"could not read the XLSX workbook ({exc}); re-save it or export it as CSV"
            ) from exc
        if not workbook.worksheets:
            raise FileError("the workbook has no worksheets")
        sheet = workbook.worksheets[0]
        # Some writers store a wrong sheet size, which makes read-only mode stop early.
        sheet.reset_dimensions()
        records = enumerate(sheet.iter_rows(min_row=1, min_col=1, values_only=True), start=1)

        def next_row() -> tuple[int, list[object]] | None:
            try:
                for number, values in records:
                    cells = list(values)
                    if not all(_is_empty(c) for c in cells):
                        return number, cells
            except FileError:
                raise
            except Exception as exc:
                raise FileError(
                    f"could not read the XLSX workbook ({exc}); re-save it or export it as CSV"
                ) from exc
            return None

        first = next_row()
        if first is None:
            raise FileError(EMPTY_FILE)
        header = first[1]
        while header and _is_empty(header[-1]):
            header.pop()
        data = next_row()
        if data is None:
            raise FileError(NO_DATA_ROWS)
    except BaseException:
        close()
        raise

    return header, _XlsxRows(data, next_row, close, len(header)), []


class _XlsxRows(Iterator[tuple[int, list[object]]]):
    """Data rows of a workbook; closes it when exhausted, closed or garbage-collected.

    A plain generator would leave the file open if the caller never starts it (e.g. read_header fails).
    """

    def __init__(
        self,
        first: tuple[int, list[object]],
        next_row: Callable[[], tuple[int, list[object]] | None],
        close: Callable[[], None],
        width: int,
    ) -> None:
        self._pending: tuple[int, list[object]] | None = first
        self._next_row = next_row
        self._close: Callable[[], None] | None = close
        self._width = width

    def __next__(self) -> tuple[int, list[object]]:
        row = self._pending
        if row is None:
            if self._close is None:
                raise StopIteration
            try:
                row = self._next_row()
            except BaseException:
                self.close()
                raise
            if row is None:
                self.close()
                raise StopIteration
        self._pending = None
        return row[0], row[1][: self._width]

    def close(self) -> None:
        """Releases the workbook; further iteration stops."""
        self._pending = None
        if self._close is not None:
            close, self._close = self._close, None
            close()

    def __del__(self) -> None:
        self.close()


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
