"""Import basics: the kinds, limits, and the error and header types every part shares."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

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
