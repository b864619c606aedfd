"""The IO document: rendered as PDF and XLSX, then parsed back to check what an advertiser sees."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from io import BytesIO

import openpyxl
import pytest
from pypdf import PdfReader

from api.io_documents import DocumentUnit, IoDocument, render_pdf, render_xlsx
from domain.io import Invoice, InvoiceLine, Placement, PricingModel

EVIL = '=HYPERLINK("http://evil")'
CAFE = "Café ☕ 日本"
PROMO = "ACME7K3Q"
VANITY = "https://listen.example.com/acme"


def _units() -> list[DocumentUnit]:
    return [
        DocumentUnit(
            id="u-1",
            show_name="The Daily Grind",
            placement="pre_roll",
            format="host_read",
            insertion="baked_in",
            air_date=date(2026, 12, 3),
            duration_s=60,
            pricing_model="cpm",
            cpm_usd=Decimal("25.00"),
            impressions_goal=40_000,
            price_usd=Decimal("1000.00"),
            status="delivered",
            delivered_impressions=41_250,
        ),
        DocumentUnit(
            id="u-2",
            show_name=EVIL,
            placement="mid_roll",
            format="produced",
            insertion="dynamic",
            air_date=date(2026, 12, 10),
            duration_s=30,
            pricing_model="cpm",
            cpm_usd=Decimal("18.50"),
            impressions_goal=800_000,
            price_usd=Decimal("14800.00"),
            status="aired",
            delivered_impressions=612_000,
        ),
        DocumentUnit(
            id="u-3",
            show_name=CAFE,
            placement="post_roll",
            format="host_read",
            insertion="baked_in",
            air_date=date(2026, 12, 17),
            duration_s=90,
            pricing_model="flat",
            flat_usd=Decimal("2600.00"),
            price_usd=Decimal("2600.00"),
            status="scheduled",
        ),
    ]


def _invoice() -> Invoice:
    issued = datetime(2027, 1, 5, 9, 30, tzinfo=UTC)
    return Invoice(
        number="INV-1A2B3C4D5E",
        issued_at=issued,
        due_date=issued.date() + timedelta(days=30),
        payment_terms_days=30,
        lines=[
            InvoiceLine(
                ad_unit_id="u-1",
                show_name="The Daily Grind",
                placement=Placement.PRE_ROLL,
                air_date=date(2026, 12, 3),
                pricing_model=PricingModel.CPM,
                quantity=40_000,
                rate_usd=Decimal("25.00"),
                amount_usd=Decimal("1000.00"),
                note="goal delivered",
            ),
            InvoiceLine(
                ad_unit_id="u-3",
                show_name=CAFE,
                placement=Placement.POST_ROLL,
                air_date=date(2026, 12, 17),
                pricing_model=PricingModel.FLAT,
                quantity=1,
                rate_usd=Decimal("2600.00"),
                amount_usd=Decimal("2600.00"),
                note="=flat fee, aired",
            ),
        ],
        total_usd=Decimal("3600.00"),
    )


def _doc(**overrides: object) -> IoDocument:
    fields: dict[str, object] = {
        "io_id": "1a2b3c4d-0000-0000-0000-000000000000",
        "number": "IO-1A2B3C4D",
        "issued_on": date(2026, 11, 20),
        "publisher": "Northwind Audio",
        "advertiser": "Acme Coffee",
        "advertiser_domain": "acme.example",
        "campaign_name": "Winter Roast Launch",
        "status": "live",
        "promo_code": PROMO,
        "vanity_url": VANITY,
        "payment_terms_days": 30,
        "underdelivery_policy": "makegood",
        "measurement_window_days": 7,
        "units": _units(),
        "total_usd": Decimal("18400.00"),
        "invoice": _invoice(),
    }
    fields.update(overrides)
    return IoDocument.model_validate(fields)


def _pdf_text(data: bytes) -> tuple[int, str]:
    reader = PdfReader(BytesIO(data))
    return len(reader.pages), "\n".join(page.extract_text() for page in reader.pages)


def _cells(ws: openpyxl.worksheet.worksheet.Worksheet) -> list[openpyxl.cell.cell.Cell]:
    return [cell for row in ws.iter_rows() for cell in row if cell.value is not None]


def _find(ws: openpyxl.worksheet.worksheet.Worksheet, value: object) -> openpyxl.cell.cell.Cell:
    matches = [cell for cell in _cells(ws) if cell.value == value]
    assert matches, f"{value!r} not in sheet {ws.title}"
    return matches[0]


# ---------------------------------------------------------------------------------------------
# PDF


def test_pdf_carries_the_deal() -> None:
    data = render_pdf(_doc())
    assert data.startswith(b"%PDF")
    _, text = _pdf_text(data)
    assert "Insertion Order IO-1A2B3C4D" in text
    assert PROMO in text
    assert VANITY in text
    for name in ("The Daily Grind", EVIL, "Caf"):
        assert name in text
    assert "$18,400.00" in text
    assert "CPM $25.00 x 40,000" in text
    assert "Net 30" in text
    assert "made good in the show's next free slot" in text
    assert "7 days after each unit airs" in text
    assert "Acme Coffee (acme.example)" in text


def test_pdf_includes_the_invoice() -> None:
    _, text = _pdf_text(render_pdf(_doc()))
    assert "Invoice INV-1A2B3C4D5E" in text
    assert "2027-02-04" in text  # due date
    assert "$3,600.00" in text
    assert "goal delivered" in text


def test_pdf_without_invoice_and_cancelled() -> None:
    doc = _doc(
        invoice=None, status="cancelled", cancel_reason="Advertiser paused Q1 spend 🙁", units=_units()[:1]
    )
    _, text = _pdf_text(render_pdf(doc))
    assert "INV-" not in text
    assert "Cancelled: Advertiser paused Q1 spend" in text


def test_pdf_prorata_policy_wording() -> None:
    _, text = _pdf_text(render_pdf(_doc(underdelivery_policy="prorata")))
    assert "CPM units short of goal are billed pro rata" in text


def test_pdf_sanitises_text_core_fonts_cannot_draw() -> None:
    doc = _doc(
        publisher="日本 Podcasts 🎙",
        advertiser="Ődön “Quotes” — Łtd",
        campaign_name="Zürich\tlaunch\nphase\x00 2",
    )
    _, text = _pdf_text(render_pdf(doc))
    # Ő has a latin-1 base letter, Ł has none.
    assert 'Odön "Quotes" - ?td' in text
    assert "Zürich launch phase 2" in text
    assert "Podcasts" in text


def test_pdf_long_io_breaks_across_pages() -> None:
    units = [
        _units()[i % 3].model_copy(update={"id": f"u-{i}", "show_name": f"Show Number {i:02d}"})
        for i in range(60)
    ]
    units[59] = units[59].model_copy(update={"makegood_of": "u-3"})
    pages, text = _pdf_text(render_pdf(_doc(units=units)))
    assert pages > 1
    for i in range(60):
        assert f"Show Number {i:02d}" in text
    assert "make-good of #4" in text
    assert "612,000" in text
    assert "Page 1 of" in text


def test_pdf_is_deterministic() -> None:
    assert render_pdf(_doc()) == render_pdf(_doc())


# ---------------------------------------------------------------------------------------------
# XLSX


def test_xlsx_io_sheet() -> None:
    wb = openpyxl.load_workbook(BytesIO(render_xlsx(_doc())))
    assert wb.sheetnames == ["Insertion Order", "Invoice"]
    ws = wb["Insertion Order"]
    assert ws["A1"].value == "Insertion Order IO-1A2B3C4D"
    assert _find(ws, PROMO).data_type == "s"
    _find(ws, VANITY)
    _find(ws, "Winter Roast Launch")
    _find(ws, "Net 30 days")

    for unit in _units():
        name = "'" + unit.show_name if unit.show_name.startswith("=") else unit.show_name
        show = _find(ws, name)
        air = ws.cell(row=show.row, column=5)
        assert air.is_date and air.value.date() == unit.air_date
        price = ws.cell(row=show.row, column=11)
        assert isinstance(price.value, int | float)
        assert price.value == pytest.approx(float(unit.price_usd))
        assert "$" in price.number_format
        assert ws.cell(row=show.row, column=6).value == unit.duration_s

    grind = _find(ws, "The Daily Grind")
    assert ws.cell(row=grind.row, column=8).value == pytest.approx(25.0)
    assert ws.cell(row=grind.row, column=9).value == 40_000
    assert ws.cell(row=grind.row, column=13).value == 41_250

    total = _find(ws, "Total")
    total_value = ws.cell(row=total.row, column=11).value
    assert isinstance(total_value, int | float) and total_value == pytest.approx(18400.0)

    assert ws.column_dimensions["A"].width >= 30


def test_xlsx_neutralises_formula_looking_text() -> None:
    doc = _doc(
        advertiser="+Acme",
        campaign_name="-Winter",
        promo_code="@PROMO",
        publisher="=SUM(A1:A2)",
        cancel_reason="=cmd|' /C calc'!A0",
    )
    wb = openpyxl.load_workbook(BytesIO(render_xlsx(doc)))
    formulas = [cell.coordinate for ws in wb for cell in _cells(ws) if cell.data_type == "f"]
    assert formulas == []
    evil = _find(wb["Insertion Order"], "'" + EVIL)
    assert evil.data_type == "s"
    for value in ("'+Acme", "'-Winter", "'@PROMO", "'=SUM(A1:A2)", "'=cmd|' /C calc'!A0"):
        _find(wb["Insertion Order"], value)
    _find(wb["Invoice"], "'=flat fee, aired")


def test_xlsx_invoice_sheet() -> None:
    wb = openpyxl.load_workbook(BytesIO(render_xlsx(_doc())))
    ws = wb["Invoice"]
    assert ws["A1"].value == "Invoice INV-1A2B3C4D5E"
    due = _find(ws, "Due")
    assert ws.cell(row=due.row, column=2).value.date() == date(2027, 2, 4)
    note = _find(ws, "goal delivered")
    assert ws.cell(row=note.row, column=5).value == 40_000
    assert ws.cell(row=note.row, column=7).value == pytest.approx(1000.0)
    total = _find(ws, "Total")
    assert ws.cell(row=total.row, column=7).value == pytest.approx(3600.0)


def test_xlsx_without_invoice_and_cancelled() -> None:
    doc = _doc(invoice=None, status="cancelled", cancel_reason="Advertiser paused Q1 spend")
    wb = openpyxl.load_workbook(BytesIO(render_xlsx(doc)))
    assert wb.sheetnames == ["Insertion Order"]
    ws = wb["Insertion Order"]
    reason = _find(ws, "Advertiser paused Q1 spend")
    assert ws.cell(row=reason.row, column=1).value == "Cancelled"
    _find(ws, "Cancelled")


def test_xlsx_drops_characters_xml_cannot_hold() -> None:
    wb = openpyxl.load_workbook(BytesIO(render_xlsx(_doc(campaign_name="Bell\x07 Launch"))))
    _find(wb["Insertion Order"], "Bell Launch")
