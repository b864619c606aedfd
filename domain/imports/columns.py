"""The columns of each import kind and how a file's header maps onto them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from domain.catalog import (
    AdvertiserFields,
    ShowFields,
)
from domain.imports.base import _ID_MAX, _NAME_MAX, _TEXT_MAX, KINDS, FileError, Header
from domain.imports.cells import (
    CellParser,
    _age_band,
    _brand_safety,
    _country,
    _country_code,
    _date,
    _distribution,
    _domain,
    _email,
    _gender,
    _int,
    _is_empty,
    _list_of,
    _money,
    _share,
    _stage,
    _text,
    _text_of,
    _tolerance,
    _url,
    _uuid,
)

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
