"""Reading files: format detection, streaming CSV (encodings, delimiters) and XLSX rows."""

from __future__ import annotations

import codecs
import csv
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import IO, Any

import openpyxl

from domain.imports.base import _BOM, EMPTY_FILE, NO_DATA_ROWS, NOT_A_SPREADSHEET, SNIFF_BYTES, FileError
from domain.imports.cells import _is_empty

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


def iter_xlsx_rows(
    stream: IO[bytes], *, owns_stream: bool = False
) -> tuple[list[object], Iterator[tuple[int, list[object]]], list[str]]:
    """Streams the first worksheet of an XLSX: (header cells, iterator of (row number, cells), warnings).

    The caller opens the file (seekable, binary; openpyxl refuses paths whose extension is not
    .xlsx, and uploads are temp files). With `owns_stream` the rows iterator closes it together
    with the workbook.
    """
    owned = stream if owns_stream else None
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
