"""Import parsing of ARCHITECTURE section 10: streaming CSV/XLSX reading, cell rules, row validation."""

from __future__ import annotations

import gc
import io
import zipfile
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest

from domain.catalog import RiskLevel, Tolerance
from domain.imports import (
    EMPTY_FILE,
    KINDS,
    NO_DATA_ROWS,
    NOT_A_SPREADSHEET,
    SNIFF_BYTES,
    FileError,
    Header,
    RowError,
    columns_of,
    iter_csv_rows,
    iter_xlsx_rows,
    natural_key,
    neutralise,
    parse_row,
    read_header,
    sniff_format,
)
from domain.stages import Stage

Parsed = tuple[list[dict[str, object]], list[tuple[int, list[RowError]]], list[str]]


def parse_csv(kind: str, chunks: Iterable[bytes]) -> Parsed:
    """Runs the whole pipeline the way the upload endpoint does: good records, bad rows, warnings."""
    header_cells, rows, warnings = iter_csv_rows(chunks)
    header = read_header(kind, header_cells)
    good: list[dict[str, object]] = []
    bad: list[tuple[int, list[RowError]]] = []
    for number, cells in rows:
        record, errors = parse_row(kind, header, cells, number)
        if record is not None:
            good.append(record)
        elif errors:
            bad.append((number, errors))
    return good, bad, header.warnings + warnings


def one_row(kind: str, header: str, row: str) -> tuple[dict[str, object] | None, list[RowError]]:
    """Parses a single comma-separated data row under a header."""
    header_cells = header.split(",")
    return parse_row(kind, read_header(kind, header_cells), next(iter([row.split(",")])), 2)


def errors_by_column(errors: list[RowError]) -> dict[str | None, RowError]:
    return {e.column: e for e in errors}


# ---------------------------------------------------------------------------------------------
# Each kind, end to end from CSV bytes

SHOWS_CSV = (
    "\ufeff External_ID ,NAME, Categories ,Avg_Downloads,episodes_per_month,CPM_USD,geo,age,"
    "Female_Share,brand_safety,rss_url,colour\r\n"
    's-1,"Tech, Talk\nand more","Technology; News ;;","85,000",4,$18.50,US:0.62;gb:20%,'
    "18-24:20%;25-34:0.45,45%,obscenity_profanity:HIGH;debated_social_issues:medium,"
    "https://example.com/feed.xml,red\r\n"
    's-2,=HYPERLINK("http://evil"),,1200,,,,,,,,\r\n'
).encode()


def test_shows_csv_with_bom_mixed_case_headers_and_quoted_fields() -> None:
    good, bad, warnings = parse_csv("shows", [SHOWS_CSV])
    assert bad == []
    assert warnings == ["ignored unknown columns: colour"]
    first, second = good
    assert first == {
        "external_id": "s-1",
        "name": "Tech, Talk\nand more",
        "categories": ["Technology", "News"],
        "avg_downloads": 85000,
        "episodes_per_month": 4,
        "cpm_usd": Decimal("18.50"),
        "geo": {"US": 0.62, "GB": 0.2},
        "age": {"18-24": 0.2, "25-34": 0.45},
        "female_share": 0.45,
        "brand_safety": {"obscenity_profanity": RiskLevel.HIGH, "debated_social_issues": RiskLevel.MEDIUM},
        "rss_url": "https://example.com/feed.xml",
    }
    # Empty optional cells are left out; formula-looking text is kept exactly as typed.
    assert second == {"external_id": "s-2", "name": '=HYPERLINK("http://evil")', "avg_downloads": 1200}


def test_advertisers_csv_semicolon_delimited() -> None:
    data = (
        "external_id;name;domain;target_categories;target_geo;target_age;brand_safety_tolerance;"
        "budget_usd;flight_start;flight_end\n"
        'a-1;Acme; https://www.Acme.com/about ;"Technology;Business";"us; gb";"18 – 24;25-34";High;'
        '"$12,000";2024-03-01;2024-06-30\n'
        "a-2;Beta;;;;;;12000.5;;\n"
    ).encode()
    good, bad, warnings = parse_csv("advertisers", [data])
    assert bad == [] and warnings == []
    assert good[0] == {
        "external_id": "a-1",
        "name": "Acme",
        "domain": "www.acme.com",
        "target_categories": ["Technology", "Business"],
        "target_geo": ["US", "GB"],
        "target_age": ["18-24", "25-34"],
        "brand_safety_tolerance": Tolerance.HIGH,
        "budget_usd": Decimal("12000.00"),
        "flight_start": date(2024, 3, 1),
        "flight_end": date(2024, 6, 30),
    }
    assert good[1] == {"external_id": "a-2", "name": "Beta", "budget_usd": Decimal("12000.50")}


def test_campaigns_csv_tab_delimited() -> None:
    data = (
        b"External ID\tadvertiser_external_id\tshow_external_id\tname\tvalue_usd\tstage\texpected_close\t"
        b"lost_reason\towner_email\n"
        b"c-1\ta-1\ts-1\tSpring, flight\t12,000.00 USD\tProposal\t2024-05-31\t\tsam@example.com\n"
        b"c-2\ta-1\t\tDefault stage\t500\t\t\t\t\n"
        b"c-3\ta-2\t\tLost one\t1\tLOST\t\tBudget cut\t\n"
        b"c-4\ta-2\t\tLost without reason\t1\tlost\t\t\t\n"
    )
    good, bad, _ = parse_csv("campaigns", [data])
    assert good[0] == {
        "external_id": "c-1",
        "advertiser_external_id": "a-1",
        "show_external_id": "s-1",
        "name": "Spring, flight",
        "value_usd": Decimal("12000.00"),
        "stage": Stage.PROPOSAL,
        "expected_close": date(2024, 5, 31),
        "owner_email": "sam@example.com",
    }
    assert good[1]["stage"] == "lead"
    assert good[2]["stage"] is Stage.LOST and good[2]["lost_reason"] == "Budget cut"
    assert bad == [
        (5, [RowError(5, "lost_reason", None, "a lost_reason is required when the stage is lost")])
    ]


def test_show_downloads_csv() -> None:
    data = b'show_external_id,date,downloads,country\ns-1,2024-03-01,"1,200",us\ns-1,2024-03-01,800,\n'
    good, bad, _ = parse_csv("show_downloads", [data])
    assert bad == []
    assert good == [
        {"show_external_id": "s-1", "date": date(2024, 3, 1), "downloads": 1200, "country": "US"},
        {"show_external_id": "s-1", "date": date(2024, 3, 1), "downloads": 800, "country": ""},
    ]
    assert natural_key("show_downloads", good[1]) == ("s-1", date(2024, 3, 1), "")


def test_kinds() -> None:
    assert KINDS == ("shows", "advertisers", "campaigns", "show_downloads", "deliveries")
    assert columns_of("show_downloads") == (
        ("show_external_id", True),
        ("date", True),
        ("downloads", True),
        ("country", False),
    )
    with pytest.raises(ValueError, match="unknown import kind"):
        read_header("deals", ["external_id"])


# ---------------------------------------------------------------------------------------------
# Streaming


STREAM_CSV = (
    "\ufeffexternal_id;name;avg_downloads;geo\r\n"
    's-1;"Café; “quoted”\r\nsecond line";"85,000";"US:0.5;DE:25%"\r\n'
    "\r\n"
    "s-2;Ünïcödé – ✓;1;\r"
    "s-3;Ωmega;2;GB:1\n"
).encode()


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_chunks_split_at_every_byte_position_give_the_same_rows() -> None:
    whole = parse_csv("shows", [STREAM_CSV])
    good, bad, warnings = whole
    assert bad == [] and warnings == []
    assert [r["name"] for r in good] == ["Café; “quoted”\r\nsecond line", "Ünïcödé – ✓", "Ωmega"]
    for cut in range(len(STREAM_CSV) + 1):
        assert parse_csv("shows", [STREAM_CSV[:cut], STREAM_CSV[cut:]]) == whole, cut
    for first in range(1, 8):
        for second in range(1, 8):
            pieces = [STREAM_CSV[:first], *chunked(STREAM_CSV[first:], second)]
            assert parse_csv("shows", pieces) == whole, (first, second)
    assert parse_csv("shows", chunked(STREAM_CSV, 1)) == whole
    assert parse_csv("shows", [b"", *chunked(STREAM_CSV, 3), b""]) == whole


def test_row_numbers_count_blank_and_multi_line_rows_as_a_spreadsheet_does() -> None:
    _, rows, _ = iter_csv_rows([STREAM_CSV])
    # Row 2 spans two physical lines but is one row; row 3 is blank and skipped.
    assert [number for number, _ in rows] == [2, 4, 5]


def test_reading_is_lazy() -> None:
    consumed = 0
    row = b"s-1,A show,100\n"
    total = 10 * SNIFF_BYTES // len(row)

    def source() -> Iterator[bytes]:
        nonlocal consumed
        yield b"external_id,name,avg_downloads\n"
        for _ in range(total):
            consumed += 1
            yield row

    header, rows, _ = iter_csv_rows(source())
    assert header == ["external_id", "name", "avg_downloads"]
    assert consumed * len(row) <= SNIFF_BYTES + len(row)
    assert sum(1 for _ in rows) == total
    assert consumed == total


# ---------------------------------------------------------------------------------------------
# Whole-file problems


def test_unknown_columns_are_reported_once() -> None:
    header = read_header("show_downloads", ["show_external_id", "Date", "downloads", "Colour", "", "notes"])
    assert header.columns == {0: "show_external_id", 1: "date", 2: "downloads"}
    assert header.warnings == ["ignored unknown columns: Colour, notes"]
    assert header.width == 6


def test_missing_required_columns_are_all_named() -> None:
    with pytest.raises(FileError) as info:
        read_header("shows", ["name", "cpm_usd"])
    assert str(info.value) == "missing required columns: external_id, avg_downloads"
    with pytest.raises(FileError, match="first row must hold the column names"):
        read_header("campaigns", ["c-1", "a-1", "x"])


def test_duplicate_known_column_is_a_file_error() -> None:
    with pytest.raises(FileError, match="column name appears more than once"):
        read_header("shows", ["external_id", "name", "avg_downloads", " NAME "])


def test_header_accepts_copied_spellings() -> None:
    header = read_header("shows", ["External ID", "name*", "AVG-DOWNLOADS"])
    assert set(header.columns.values()) == {"external_id", "name", "avg_downloads"}


@pytest.mark.parametrize(
    "chunks", [[], [b""], [b"\xef\xbb\xbf"], [b" \r\n\r\n  \n"], [b"\xef\xbb", b"\xbf\n"]]
)
def test_empty_file(chunks: list[bytes]) -> None:
    with pytest.raises(FileError) as info:
        iter_csv_rows(chunks)
    assert str(info.value) == EMPTY_FILE


@pytest.mark.parametrize(
    "data", [b"external_id,name,avg_downloads", b"external_id,name,avg_downloads\r\n", b"a,b\n\n , \n,,\n"]
)
def test_header_only(data: bytes) -> None:
    with pytest.raises(FileError) as info:
        iter_csv_rows([data])
    assert str(info.value) == NO_DATA_ROWS


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"PK\x03\x04\x14\x00\x00\x00",
        b"name,value\nA,\x00\x00\x00\x01",
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 20,
        bytes(range(1, 9)) * 64,
        b"%PDF-1.7\n",
    ],
)
def test_binary_garbage_is_not_a_csv(data: bytes) -> None:
    with pytest.raises(FileError) as info:
        iter_csv_rows([data])
    assert str(info.value).startswith(NOT_A_SPREADSHEET)


def test_nul_byte_after_the_sniffed_part_stops_the_rows() -> None:
    body = b"external_id,name,avg_downloads\n" + b"s,n,1\n" * (SNIFF_BYTES // 6 + 10)
    _, rows, _ = iter_csv_rows([body, b"s,\x00,1\n"])
    with pytest.raises(FileError, match="NUL byte at offset"):
        list(rows)


def test_sniff_format() -> None:
    assert sniff_format(b"PK\x03\x04rest", "upload.bin") == "xlsx"
    assert sniff_format(b"external_id,name\n", "shows.xlsx") == "csv"  # content decides
    assert sniff_format("\ufeffname\n".encode(), "x.csv") == "csv"
    with pytest.raises(FileError, match="the file is empty"):
        sniff_format(b"", "x.csv")
    with pytest.raises(FileError, match="old .xls workbook"):
        sniff_format(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00\x00", "report.xls")
    with pytest.raises(FileError) as info:
        sniff_format(b"\x89PNG\r\n\x1a\n", "logo.png")
    assert str(info.value) == NOT_A_SPREADSHEET


def test_unmatched_quote_is_a_file_error_naming_the_row() -> None:
    data = b'external_id,name,avg_downloads\ns-1,ok,1\ns-2,"never closed,2\ns-3,x,3\n'
    _, rows, _ = iter_csv_rows([data])
    assert next(rows)[0] == 2
    with pytest.raises(FileError, match=r"row 3: malformed CSV .*unmatched double quote"):
        next(rows)


# ---------------------------------------------------------------------------------------------
# Encodings


def test_cp1252_falls_back_with_a_warning() -> None:
    data = b"external_id,name,avg_downloads\ns-1,Caf\xe9 \x93Noir\x94,1\n"
    good, bad, warnings = parse_csv("shows", [data])
    assert bad == []
    assert good[0]["name"] == "Café “Noir”"
    assert warnings == ["file is not valid UTF-8 (first bad byte at offset 38); read as Windows-1252"]


def test_cp1252_decided_from_the_sniffed_part_even_after_valid_utf8() -> None:
    # A valid UTF-8 sequence before the bad byte does not matter inside the sniffed part.
    data = b"external_id,name,avg_downloads\ns-1,\xc3\xa9,1\ns-2,Caf\xe9,2\n"
    good, _, warnings = parse_csv("shows", [data])
    assert [r["name"] for r in good] == ["Ã©", "Café"]
    assert len(warnings) == 1


def test_late_bad_byte_after_plain_ascii_switches_to_cp1252() -> None:
    head = b"external_id,name,avg_downloads\n" + b"s-0,plain,1\n" * (SNIFF_BYTES // 12 + 10)
    header, rows, warnings = iter_csv_rows(chunked(head + b"s-9,Caf\xe9,2\n", 4096))
    assert warnings == []
    last = list(rows)[-1]
    assert last[1] == ["s-9", "Café", "2"]
    assert warnings == [
        f"file is not valid UTF-8 (first bad byte at offset {len(head) + 7}); read as Windows-1252"
    ]


def test_late_bad_byte_after_utf8_text_is_a_file_error() -> None:
    head = "external_id,name,avg_downloads\ns-1,Café,1\n".encode() + b"s-0,plain,1\n" * (
        SNIFF_BYTES // 12 + 10
    )
    _, rows, _ = iter_csv_rows(chunked(head + b"s-9,Caf\xe9,2\n", 4096))
    with pytest.raises(FileError) as info:
        list(rows)
    assert str(info.value) == (
        f"file is not valid UTF-8 text: undecodable byte 0xe9 at offset {len(head) + 7}; save it as UTF-8 CSV"
    )


def test_truncated_utf8_at_the_end_falls_back() -> None:
    good, _, warnings = parse_csv("shows", [b"external_id,name,avg_downloads\ns,n,1\ns,x\xc3"])
    assert len(good) == 1 and warnings


# ---------------------------------------------------------------------------------------------
# XLSX


def build_xlsx(rows: list[list[object]], title: str = "Shows", text_formulas: bool = True) -> bytes:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = title
    for row in rows:
        sheet.append(row)
    if text_formulas:
        # A text cell that starts with "=" (typed with a leading apostrophe in Excel), not a formula.
        for cells in sheet.iter_rows():
            for c in cells:
                if c.data_type == "f":
                    c.data_type = "s"
    workbook.create_sheet("Other").append(["ignored"])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def test_xlsx_round_trip_with_date_and_numeric_cells(tmp_path: Path) -> None:
    data = build_xlsx(
        [
            [
                "External ID ",
                "Advertiser_External_ID",
                "name",
                "value_usd",
                "expected_close",
                "stage",
                "",
                None,
            ],
            [1001, "a-1", "Spring", 12000.5, datetime(2024, 5, 31), "Won", None, None],
            [None, None, None, None, None, None, None, None],
            ["c-2", "a-1", "=SUM(A1:A2)", "$1,200", date(2024, 6, 1), None, None, "stray note"],
        ]
    )
    # A temporary upload name without .xlsx must work too.
    path = tmp_path / "upload.tmp"
    path.write_bytes(data)
    for source in (path.open("rb"), io.BytesIO(data)):
        header_cells, rows, warnings = iter_xlsx_rows(source, owns_stream=True)
        assert header_cells[:6] == [
            "External ID ",
            "Advertiser_External_ID",
            "name",
            "value_usd",
            "expected_close",
            "stage",
        ]
        header = read_header("campaigns", header_cells)
        parsed = [(n, parse_row("campaigns", header, cells, n)) for n, cells in rows]
        assert warnings == []
        assert [n for n, _ in parsed] == [2, 4]
        (_, (first, first_errors)), (_, (second, second_errors)) = parsed
        assert first_errors == [] and second_errors == []
        assert first == {
            "external_id": "1001",
            "advertiser_external_id": "a-1",
            "name": "Spring",
            "value_usd": Decimal("12000.50"),
            "expected_close": date(2024, 5, 31),
            "stage": Stage.WON,
        }
        assert second is not None
        assert second["name"] == "=SUM(A1:A2)"
        assert second["value_usd"] == Decimal("1200.00")
        assert second["expected_close"] == date(2024, 6, 1)


def test_xlsx_formula_without_cached_value_reads_as_empty() -> None:
    # openpyxl saves no cached results; data_only then yields None, which is never evaluated by us.
    data = build_xlsx(
        [["external_id", "name", "avg_downloads"], ["s-1", '=CONCAT("a","b")', "=1+1"]], text_formulas=False
    )
    header_cells, rows, _ = iter_xlsx_rows(io.BytesIO(data))
    number, cells = next(rows)
    _, errors = parse_row("shows", read_header("shows", header_cells), cells, number)
    assert [(e.column, e.message) for e in errors] == [
        ("name", "a value is required"),
        ("avg_downloads", "a value is required"),
    ]


def test_xlsx_cells_keep_their_types() -> None:
    data = build_xlsx([["show_external_id", "date", "downloads"], ["s-1", date(2024, 1, 2), 85000.0]])
    _, rows, _ = iter_xlsx_rows(io.BytesIO(data))
    number, cells = next(rows)
    assert number == 2
    assert isinstance(cells[1], datetime) and cells[2] == 85000
    record, errors = parse_row(
        "show_downloads", read_header("show_downloads", ["show_external_id", "date", "downloads"]), cells, 2
    )
    assert errors == []
    assert record == {"show_external_id": "s-1", "date": date(2024, 1, 2), "downloads": 85000, "country": ""}


def test_xlsx_header_only_and_empty() -> None:
    with pytest.raises(FileError) as info:
        iter_xlsx_rows(io.BytesIO(build_xlsx([["external_id", "name", "avg_downloads"]])))
    assert str(info.value) == NO_DATA_ROWS
    with pytest.raises(FileError) as info:
        iter_xlsx_rows(io.BytesIO(build_xlsx([])))
    assert str(info.value) == EMPTY_FILE


def test_not_an_xlsx() -> None:
    other_zip = io.BytesIO()
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("hello.txt", "hi")
    for data in (other_zip.getvalue(), b"external_id,name\n", b"PK\x03\x04 truncated"):
        with pytest.raises(FileError) as info:
            iter_xlsx_rows(io.BytesIO(data))
        assert str(info.value).startswith(NOT_A_SPREADSHEET)


# ---------------------------------------------------------------------------------------------
# Row errors


def test_row_errors_name_row_column_and_value_for_every_bad_cell() -> None:
    data = (
        b"external_id,name,avg_downloads,cpm_usd,female_share,geo,age,brand_safety,rss_url\n"
        b"s-1,Good,100,,,,,,\n"
        b",Bad,12k,-5,1.5,USA:0.5,17-20:1,violence:high;obscenity_profanity:extreme,ftp://x\n"
    )
    good, bad, _ = parse_csv("shows", [data])
    assert len(good) == 1
    [(number, errors)] = bad
    assert number == 3
    by_column = errors_by_column(errors)
    assert list(by_column) == [
        "external_id",
        "avg_downloads",
        "cpm_usd",
        "female_share",
        "geo",
        "age",
        "brand_safety",
        "rss_url",
    ]
    assert by_column["external_id"] == RowError(3, "external_id", None, "a value is required")
    assert by_column["avg_downloads"] == RowError(3, "avg_downloads", "12k", "not a whole number: '12k'")
    assert by_column["cpm_usd"].message == "must not be negative: '-5'"
    assert by_column["female_share"].value == "1.5"
    assert "ISO 3166-1 alpha-2" in by_column["geo"].message
    assert "unknown age band '17-20'" in by_column["age"].message
    assert "unknown GARM category 'violence'" in by_column["brand_safety"].message
    assert "unknown risk level 'extreme'" in by_column["brand_safety"].message
    assert by_column["rss_url"].message == "not an http(s) URL: 'ftp://x'"


def test_model_validation_errors_name_the_column() -> None:
    record, errors = one_row(
        "shows", "external_id,name,avg_downloads,geo,cpm_usd", "s,n,1,US:0.7;GB:0.5,20000"
    )
    assert record is None
    by_column = errors_by_column(errors)
    assert by_column["geo"].message == (
        "geo shares add up to 1.2000, more than 1 "
        "(up to 1.02 for 2 share(s) is taken as rounding and scaled to 1)"
    )
    assert by_column["geo"].value == "US:0.7;GB:0.5"
    assert by_column["cpm_usd"].message == "Input should be less than or equal to 10000"


def test_advertiser_checks() -> None:
    header = "external_id,name,domain,target_geo,target_age,brand_safety_tolerance,flight_start,flight_end"
    record, errors = one_row(
        "advertisers", header, "a,Acme,not a domain,US;Britain,18-24;99+,extreme,2024-06-01,2024-05-01"
    )
    assert record is None
    by_column = errors_by_column(errors)
    assert set(by_column) == {
        "domain",
        "target_geo",
        "target_age",
        "brand_safety_tolerance",
        "flight_end",
    }
    assert "'Britain'" in by_column["target_geo"].message
    assert by_column["flight_end"].message == "flight_end 2024-05-01 is before flight_start 2024-06-01"
    assert (
        by_column["brand_safety_tolerance"].message
        == "unknown tolerance 'extreme'; expected low, medium, high"
    )


def test_campaign_checks() -> None:
    header = "external_id,advertiser_external_id,name,value_usd,stage,owner_email,expected_close"
    record, errors = one_row("campaigns", header, "c,a,n,€100,pending,nobody,31/05/2024")
    assert record is None
    by_column = errors_by_column(errors)
    assert by_column["value_usd"].message == "only US dollar amounts are accepted: '€100'"
    assert by_column["stage"].message.startswith("unknown stage 'pending'; expected lead, qualified")
    assert by_column["owner_email"].message == "not an email address: 'nobody'"
    assert "expected YYYY-MM-DD" in by_column["expected_close"].message


def test_overlong_text() -> None:
    header = "external_id,advertiser_external_id,name,value_usd,lost_reason"
    ok, errors = one_row("campaigns", header, f"c,a,{'n' * 300},1,{'r' * 2000}")
    assert errors == [] and ok is not None
    _, errors = one_row("campaigns", header, f"c,a,{'n' * 301},1,{'r' * 2001}")
    by_column = errors_by_column(errors)
    assert by_column["name"].message == "too long: 301 characters, at most 300"
    assert by_column["name"].value == "n" * 200  # raw values are cut to 200 characters
    assert by_column["lost_reason"].message == "too long: 2001 characters, at most 2000"


def test_extra_values_beyond_the_header_usually_mean_a_missing_quote() -> None:
    header = read_header("campaigns", ["external_id", "advertiser_external_id", "name", "value_usd"])
    record, errors = parse_row("campaigns", header, ["c", "a", "n", "$12", "000"], 7)
    assert record is None
    assert errors[0].row_number == 7 and errors[0].column is None
    assert "double quotes" in errors[0].message
    # Trailing empty cells are what many exporters write: not a problem.
    record, errors = parse_row("campaigns", header, ["c", "a", "n", "12", "", " "], 7)
    assert errors == [] and record is not None


def test_empty_row_is_neither_a_record_nor_an_error() -> None:
    header = read_header("shows", ["external_id", "name", "avg_downloads"])
    assert parse_row("shows", header, ["", "  ", None], 4) == (None, [])
    assert parse_row("shows", header, [], 4) == (None, [])


def test_header_built_by_hand() -> None:
    header = Header(columns={0: "show_external_id", 1: "date", 2: "downloads"}, warnings=[])
    record, errors = parse_row("show_downloads", header, ["s", "2024-02-29", "0", "anything"], 2)
    assert errors == [] and record is not None and record["downloads"] == 0


# ---------------------------------------------------------------------------------------------
# Cell rules


def cell(kind: str, column: str, value: object) -> tuple[object, list[RowError]]:
    """Parses one cell of a column in an otherwise valid row of the kind."""
    base: dict[str, dict[str, object]] = {
        "shows": {"external_id": "s", "name": "n", "avg_downloads": 1},
        "advertisers": {"external_id": "a", "name": "n"},
        "campaigns": {"external_id": "c", "advertiser_external_id": "a", "name": "n", "value_usd": 1},
        "show_downloads": {"show_external_id": "s", "date": "2024-01-01", "downloads": 1},
    }
    values = {**base[kind], column: value}
    names = list(values)
    record, errors = parse_row(kind, read_header(kind, names), [values[n] for n in names], 2)
    return (record or {}).get(column), errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12000", Decimal("12000.00")),
        ("12000.50", Decimal("12000.50")),
        ("$12,000", Decimal("12000.00")),
        ("12,000.00 USD", Decimal("12000.00")),
        ("USD 12,000", Decimal("12000.00")),
        ("US$ 99.5", Decimal("99.50")),
        ("0", Decimal("0.00")),
        (".5", Decimal("0.50")),
        ("10.005", Decimal("10.01")),
        (12000, Decimal("12000.00")),
        (12000.1, Decimal("12000.10")),
        (0.1 + 0.2, Decimal("0.30")),
    ],
)
def test_money_accepted(text: object, expected: Decimal) -> None:
    value, errors = cell("campaigns", "value_usd", text)
    assert errors == []
    assert value == expected and isinstance(value, Decimal) and value.as_tuple().exponent == -2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-5", "must not be negative: '-5'"),
        ("-$5", "must not be negative"),
        ("$-5", "must not be negative"),
        ("(1,200.00)", "must not be negative"),
        (-3, "must not be negative"),
        ("12k", "not an amount: '12k'"),
        ("12.000,50", "not an amount"),
        ("1,2345", "not an amount"),
        ("$", "not an amount"),
        ("£5", "only US dollar amounts are accepted"),
        ("5 EUR", "only US dollar amounts are accepted"),
        ("=1+1", "not an amount: '=1+1'"),
        ("1000000000000", "too large"),
    ],
)
def test_money_rejected(text: object, message: str) -> None:
    _, errors = cell("campaigns", "value_usd", text)
    assert len(errors) == 1 and errors[0].column == "value_usd"
    assert message in errors[0].message


@pytest.mark.parametrize(
    ("text", "expected"),
    [("85000", 85000), ("85,000", 85000), ("85000.0", 85000), (85000.0, 85000), (85000, 85000), ("+7", 7)],
)
def test_integers_accepted(text: object, expected: int) -> None:
    value, errors = cell("show_downloads", "downloads", text)
    assert errors == [] and value == expected and type(value) is int


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("12k", "not a whole number: '12k'"),
        ("-5", "must not be negative: '-5'"),
        (-5, "must not be negative: '-5'"),
        ("12.5", "not a whole number"),
        (12.5, "not a whole number: '12.5'"),
        ("85.000", "ambiguous number '85.000'"),
        ("8,5000", "not a whole number"),
        ("1e5", "not a whole number"),
        (True, "not a whole number"),
        ("99999999999", "too large"),
    ],
)
def test_integers_rejected(text: object, message: str) -> None:
    _, errors = cell("show_downloads", "downloads", text)
    assert len(errors) == 1 and message in errors[0].message


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.45", 0.45), ("45%", 0.45), ("45 %", 0.45), ("100%", 1.0), ("1", 1.0), ("0", 0.0), (0.45, 0.45)],
)
def test_shares_accepted(text: object, expected: float) -> None:
    value, errors = cell("shows", "female_share", text)
    assert errors == [] and value == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("45", "share must be between 0 and 1: '45' (for a percent write 45%)"),
        ("150%", "between 0% and 100%"),
        ("-0.1", "not a share"),
        ("half", "not a share"),
        (1.5, "share must be between 0 and 1"),
    ],
)
def test_shares_rejected(text: object, message: str) -> None:
    _, errors = cell("shows", "female_share", text)
    assert len(errors) == 1 and message in errors[0].message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-31", date(2024, 3, 31)),
        (" 2024-03-31 ", date(2024, 3, 31)),
        ("2024-03-31 00:00:00", date(2024, 3, 31)),
        (datetime(2024, 3, 31, 0, 0), date(2024, 3, 31)),
        (date(2024, 3, 31), date(2024, 3, 31)),
    ],
)
def test_dates_accepted(text: object, expected: date) -> None:
    value, errors = cell("show_downloads", "date", text)
    assert errors == [] and value == expected and type(value) is date


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("31/03/2024", "not a date: '31/03/2024' (expected YYYY-MM-DD, e.g. 2024-03-31)"),
        ("2024-02-30", "not a valid date: '2024-02-30'"),
        ("20240331", "not a date"),
        ("2024-03-31 12:30:00", "not a date"),
        (45382, "the cell holds a number"),
    ],
)
def test_dates_rejected(text: object, message: str) -> None:
    _, errors = cell("show_downloads", "date", text)
    assert len(errors) == 1 and message in errors[0].message


def test_distributions() -> None:
    assert cell("shows", "geo", " us:62% ; gb : 0.2 ;")[0] == {"US": 0.62, "GB": 0.2}
    assert cell("shows", "age", "18-24:20%;25-34:45%;55+:0.1")[0] == {"18-24": 0.2, "25-34": 0.45, "55+": 0.1}
    _, errors = cell("shows", "geo", "US;GB:0.2")
    assert "expected key:value pairs" in errors[0].message
    _, errors = cell("shows", "geo", "US:0.2;us:0.3")
    assert errors[0].message == "US appears more than once"
    assert cell("shows", "brand_safety", "Terrorism:Floor")[0] == {"terrorism": RiskLevel.FLOOR}


def test_lists_are_split_stripped_and_deduplicated() -> None:
    assert cell("shows", "categories", " Comedy ;; News;Comedy; ")[0] == ["Comedy", "News"]
    assert cell("advertisers", "target_geo", "us;GB;Us")[0] == ["US", "GB"]
    _, errors = cell("shows", "categories", "x" * 101)
    assert errors[0].column == "categories" and "at most 100 characters" in errors[0].message


def test_country() -> None:
    assert cell("show_downloads", "country", " de ")[0] == "DE"
    _, errors = cell("show_downloads", "country", "DEU")
    assert errors[0].column == "country" and "ISO 3166-1 alpha-2" in errors[0].message


@pytest.mark.parametrize("text", ["=1+1", "+1 555 0100", "@SUM(A1)", "-rewind-", "=cmd|' /C calc'!A0"])
def test_formula_looking_text_is_kept_literally(text: str) -> None:
    value, errors = cell("shows", "name", text)
    assert errors == [] and value == text


def test_neutralise() -> None:
    assert neutralise("=1+1") == "'=1+1"
    assert neutralise("+1 555") == "'+1 555"
    assert neutralise("-rewind-") == "'-rewind-"
    assert neutralise("@SUM(A1)") == "'@SUM(A1)"
    assert neutralise("\t=1") == "'\t=1"
    assert neutralise("Plain name") == "Plain name"
    assert neutralise("") == ""
    assert neutralise("a=b") == "a=b"


def test_natural_key() -> None:
    assert natural_key("shows", {"external_id": "s-1", "name": "n"}) == ("s-1",)
    assert natural_key("advertisers", {"external_id": "a-1"}) == ("a-1",)
    assert natural_key("campaigns", {"external_id": "c-1"}) == ("c-1",)
    record = {"show_external_id": "s-1", "date": date(2024, 1, 1), "downloads": 3}
    assert natural_key("show_downloads", record) == ("s-1", date(2024, 1, 1), "")
    assert natural_key("show_downloads", {**record, "country": "US"}) == ("s-1", date(2024, 1, 1), "US")


def open_handles(path: Path) -> int:
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += Path(fd).readlink() == path
        except OSError:
            continue
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_xlsx_file_is_released(tmp_path: Path) -> None:
    path = tmp_path / "upload"
    path.write_bytes(build_xlsx([["external_id", "name", "avg_downloads"], ["s", "n", 1], ["t", "m", 2]]))
    _, rows, _ = iter_xlsx_rows(path.open("rb"), owns_stream=True)
    assert open_handles(path) == 1
    assert len(list(rows)) == 2
    assert open_handles(path) == 0 and list(rows) == []
    # Never iterated (say read_header failed): closing, or just dropping it, releases the file.
    _, rows, _ = iter_xlsx_rows(path.open("rb"), owns_stream=True)
    rows_close = getattr(rows, "close")  # noqa: B009 - part of the returned iterator's contract
    rows_close()
    assert open_handles(path) == 0
    _, rows, _ = iter_xlsx_rows(path.open("rb"), owns_stream=True)
    del rows
    gc.collect()
    assert open_handles(path) == 0


@pytest.mark.parametrize(
    "cells",
    [
        ["show-1", "2026-11-01", "1200", "US"],
        ["show-1", "2026-11-01", "1200", ""],
        ["  show-1 ", "2026-11-01", "007", "gb"],
        ["show-1", "2026-11-01", "1,200", "US"],
        ["show-1", " 2026-11-01", "1200", "US"],
        ["show-1", "2026-02-30", "1200", "US"],
        ["show-1", "2026-11-01", "-5", "US"],
        ["show-1", "2026-11-01", "12k", "US"],
        ["show-1", "2026-11-01", "1200", "USA"],
        ["show-1", "2026-11-01", "99999999999", "US"],
        ["", "2026-11-01", "1200", "US"],
        ["show-1", "2026-11-01", "1200", "US", "extra"],
        ["show-1", "2026-W01-1", "1200", "US"],
        ["", "", "", ""],
    ],
)
def test_download_fast_path_agrees_with_parse_row(cells: list[str]) -> None:
    from domain.imports import download_fast_path

    header = read_header("show_downloads", ["show_external_id", "date", "downloads", "country"])
    fast = download_fast_path(header)(cells)
    record, errors = parse_row("show_downloads", header, cells, 2)
    if fast is not None:
        assert errors == [] and fast == record


def test_download_fast_path_takes_plain_rows() -> None:
    from domain.imports import download_fast_path

    header = read_header("show_downloads", ["Date", "Downloads", "Show_External_ID"])
    parse = download_fast_path(header)
    assert parse(["2026-11-01", "1200", "show-1"]) == {
        "show_external_id": "show-1",
        "date": date(2026, 11, 1),
        "downloads": 1200,
        "country": "",
    }
    assert parse(["2026-11-01", "1,200", "show-1"]) is None  # left to parse_row


def test_deliveries_rows_take_api_ids_in_any_case_and_refuse_the_rest() -> None:
    header = read_header("deliveries", ["IO ID ", "ad_unit_id", "Impressions", "source"])
    io_id, unit = "6F1C2F0E-3A55-4D8E-9A51-2B7F3C1DE0A4", "0e4f5a6b7c8d4e9fa0b1c2d3e4f5a6b7"
    record, errors = parse_row("deliveries", header, [io_id, unit, "12,500", "art19"], 2)
    assert errors == [] and record == {
        "io_id": io_id.lower(),
        "ad_unit_id": "0e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7",
        "impressions": 12500,
        "source": "art19",
    }
    assert natural_key("deliveries", record) == (io_id.lower(), "0e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7")
    record, errors = parse_row("deliveries", header, ["io-1", unit, "-3", ""], 3)
    assert record is None
    assert [(e.column, e.value) for e in errors] == [("io_id", "io-1"), ("impressions", "-3")]
    assert "UUID" in errors[0].message and "negative" in errors[1].message
