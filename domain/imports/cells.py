"""Cells: spreadsheet safety, what a cell looks like to a person, and one parser per cell type."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from domain.catalog import (
    AGE_BANDS,
    GARM_CATEGORIES,
    RiskLevel,
    Tolerance,
)
from domain.imports.base import (
    _CENT,
    _EMAIL_MAX,
    _FORMULA_PREFIXES,
    _INT_MAX,
    _MONEY_MAX,
    _TEXT_MAX,
    _VALUE_CHARS,
    _CellError,
)
from domain.stages import Stage

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
