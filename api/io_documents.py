"""The insertion-order document a publisher sends an advertiser, rendered as PDF and XLSX.

Pure: takes an `IoDocument` (everything the document shows, already loaded) and returns bytes,
so the API can stream it and tests can parse it back without a database or a file system.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from io import BytesIO
from typing import Any

from fpdf import FPDF, FontFace
from fpdf.enums import Align, TableCellFillMode, XPos, YPos
from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Alignment, Border, Font, PatternFill, Side
from openpyxl.utils import get_column_letter
from pydantic import BaseModel

from domain.imports import neutralise
from domain.io import Invoice


class DocumentUnit(BaseModel):
    """One ad unit as the IO document lists it."""

    id: str
    show_name: str
    placement: str  # pre_roll | mid_roll | post_roll
    format: str  # host_read | produced
    insertion: str  # baked_in | dynamic
    air_date: date
    duration_s: int
    pricing_model: str  # cpm | flat
    cpm_usd: Decimal | None = None
    impressions_goal: int | None = None
    flat_usd: Decimal | None = None
    price_usd: Decimal
    status: str
    delivered_impressions: int = 0
    makegood_of: str | None = None


class IoDocument(BaseModel):
    """Everything an insertion-order document shows: parties, units, terms and the invoice if any."""

    io_id: str
    number: str
    issued_on: date
    publisher: str
    advertiser: str
    advertiser_domain: str | None = None
    campaign_name: str
    status: str
    promo_code: str | None = None
    vanity_url: str | None = None
    payment_terms_days: int
    underdelivery_policy: str  # makegood | prorata
    measurement_window_days: int
    units: list[DocumentUnit]
    total_usd: Decimal
    invoice: Invoice | None = None
    cancel_reason: str | None = None


# ---------------------------------------------------------------------------------------------
# Wording shared by both formats


_LABELS = {
    "pre_roll": "Pre-roll",
    "mid_roll": "Mid-roll",
    "post_roll": "Post-roll",
    "host_read": "Host-read",
    "produced": "Produced",
    "baked_in": "Baked-in",
    "dynamic": "Dynamic",
    "cpm": "CPM",
    "flat": "Flat",
    "made_good": "Made good",
}

_POLICIES = {
    "makegood": "Shortfalls on CPM units are made good in the show's next free slot",
    "prorata": "CPM units short of goal are billed pro rata",
}


def _label(value: str) -> str:
    return _LABELS.get(value, value.replace("_", " ").capitalize())


def _money(amount: Decimal) -> str:
    sign = "-" if amount < 0 else ""
    return f"{sign}${abs(amount):,.2f}"


def _pricing(unit: DocumentUnit) -> str:
    if unit.pricing_model == "cpm" and unit.cpm_usd is not None:
        goal = f" x {unit.impressions_goal:,}" if unit.impressions_goal is not None else ""
        return f"CPM {_money(unit.cpm_usd)}{goal}"
    return _label(unit.pricing_model)


def _advertiser(doc: IoDocument) -> str:
    return f"{doc.advertiser} ({doc.advertiser_domain})" if doc.advertiser_domain else doc.advertiser


def _payment_terms(days: int) -> str:
    return f"Net {days} days"


def _policy(policy: str) -> str:
    return _POLICIES.get(policy, _label(policy))


def _measurement(days: int) -> str:
    unit = "day" if days == 1 else "days"
    return f"Impressions are measured for {days} {unit} after each unit airs"


def _unit_numbers(units: Sequence[DocumentUnit]) -> dict[str, int]:
    # Make-goods point at their original by row number: unit ids mean nothing to an advertiser.
    return {u.id: i for i, u in enumerate(units, start=1)}


# ---------------------------------------------------------------------------------------------
# PDF


# Typography that NFKD leaves alone but a latin-1 core font cannot draw: keep it readable, not "?".
_TYPOGRAPHY = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": ",",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
        "\u2026": "...",
        "\u2022": "*",
        "\u20ac": "EUR",
        "\u2122": "(TM)",
    }
)
_FONT = "Helvetica"
_GREY = (235, 235, 235)
_STRIPE = (248, 248, 248)
_BOLD = FontFace(emphasis="BOLD")
_HEADINGS = FontFace(emphasis="BOLD", fill_color=_GREY)


def _latin1(text: str) -> str:
    """Text a core (latin-1) font can draw: accents kept where latin-1 has them, the rest as `?`."""
    # Whitespace runs (newlines, tabs) collapse to one space: every field renders on its own line(s).
    text = " ".join(text.translate(_TYPOGRAPHY).split())
    out: list[str] = []
    # NFKC first keeps "é" whole (latin-1 has it); NFKD is the fallback for letters latin-1 lacks
    # ("ő" -> "o"), dropping the combining marks that would otherwise each become "?".
    for ch in unicodedata.normalize("NFKC", text):
        if unicodedata.category(ch) == "Cc":
            # Control characters draw nothing, and a NUL would end up raw in the content stream.
            continue
        if ord(ch) < 256:
            out.append(ch)
            continue
        base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        out.append(base or "?")
    return "".join(out).encode("latin-1", errors="replace").decode("latin-1")


class _IoPdf(FPDF):
    """A4 landscape with the IO number and page count in every footer."""

    def __init__(self, number: str) -> None:
        super().__init__(orientation="L", unit="mm", format="A4")
        self._footer_text = _latin1(f"Insertion Order {number}")

    def footer(self) -> None:
        """Draws the IO number and `Page n of N`."""
        self.set_y(-12)
        self.set_font(_FONT, size=8)
        self.set_text_color(120)
        self.cell(0, 5, f"{self._footer_text}  |  Page {self.page_no()} of {{nb}}", align=Align.C)
        self.set_text_color(0)


def _heading(pdf: FPDF, text: str, keep_with_next: float = 30) -> None:
    # A heading never sits alone at the foot of a page: it needs `keep_with_next` mm under it.
    if pdf.will_page_break(keep_with_next):
        pdf.add_page()
    pdf.ln(4)
    pdf.set_font(_FONT, "B", 12)
    pdf.cell(0, 7, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(_FONT, size=9)


def _key_values(pdf: FPDF, rows: Iterable[tuple[str, str]]) -> None:
    pdf.set_font(_FONT, size=10)
    with pdf.table(
        col_widths=(40, 150),
        width=190,
        align=Align.L,
        text_align=Align.L,
        borders_layout="NONE",
        first_row_as_headings=False,
        line_height=4.6,
        padding=(0.6, 1),
    ) as table:
        for key, value in rows:
            row = table.row()
            row.cell(_latin1(key), style=_BOLD)
            row.cell(_latin1(value))


def _units_table(pdf: FPDF, doc: IoDocument) -> None:
    numbers = _unit_numbers(doc.units)
    # (heading, width in mm, right-aligned); widths sum to the 273 mm between the margins.
    columns = (
        ("#", 8, True),
        ("Show", 62, False),
        ("Placement", 20, False),
        ("Format", 19, False),
        ("Insertion", 18, False),
        ("Air date", 21, False),
        ("Duration", 17, True),
        ("Pricing", 37, False),
        ("Delivered", 19, True),
        ("Status", 28, False),
        ("Price", 24, True),
    )
    pdf.set_font(_FONT, size=9)
    with pdf.table(
        col_widths=tuple(width for _, width, _ in columns),
        text_align=Align.L,
        headings_style=_HEADINGS,
        cell_fill_mode=TableCellFillMode.ROWS,
        cell_fill_color=_STRIPE,
        line_height=4,
        padding=(1.2, 1.5),
    ) as table:
        head = table.row()
        for text, _, right in columns:
            head.cell(text, align=Align.R if right else Align.L)
        for i, u in enumerate(doc.units, start=1):
            status = _latin1(_label(u.status))
            if u.makegood_of is not None:
                original = numbers.get(u.makegood_of)
                ref = f"#{original}" if original is not None else _latin1(u.makegood_of)
                status += f"\nmake-good of {ref}"
            delivered = (
                f"{u.delivered_impressions:,}" if u.pricing_model == "cpm" and u.delivered_impressions else ""
            )
            row = table.row()
            row.cell(str(i), align=Align.R)
            row.cell(_latin1(u.show_name))
            row.cell(_label(u.placement))
            row.cell(_label(u.format))
            row.cell(_label(u.insertion))
            row.cell(u.air_date.isoformat())
            row.cell(f"{u.duration_s}s", align=Align.R)
            row.cell(_pricing(u))
            row.cell(delivered, align=Align.R)
            row.cell(status)
            row.cell(_money(u.price_usd), align=Align.R)
        total = table.row(style=_BOLD)
        total.cell("Total", colspan=len(columns) - 1)
        total.cell(_money(doc.total_usd), align=Align.R)


def _invoice_section(pdf: FPDF, invoice: Invoice) -> None:
    # Keeps the invoice's details and its first lines together on one page.
    _heading(pdf, f"Invoice {invoice.number}", keep_with_next=60)
    _key_values(
        pdf,
        [
            ("Issued", invoice.issued_at.date().isoformat()),
            ("Due", invoice.due_date.isoformat()),
            ("Payment terms", _payment_terms(invoice.payment_terms_days)),
            ("Currency", invoice.currency),
        ],
    )
    pdf.ln(3)
    pdf.set_font(_FONT, size=9)
    with pdf.table(
        col_widths=(62, 20, 21, 16, 24, 24, 24, 82),
        text_align=Align.L,
        headings_style=_HEADINGS,
        cell_fill_mode=TableCellFillMode.ROWS,
        cell_fill_color=_STRIPE,
        line_height=4,
        padding=(1.2, 1.5),
    ) as table:
        head = table.row()
        for text, align in (
            ("Show", Align.L),
            ("Placement", Align.L),
            ("Air date", Align.L),
            ("Pricing", Align.L),
            ("Quantity", Align.R),
            ("Rate", Align.R),
            ("Amount", Align.R),
            ("Note", Align.L),
        ):
            head.cell(text, align=align)
        for line in invoice.lines:
            cpm = line.pricing_model == "cpm"
            row = table.row()
            row.cell(_latin1(line.show_name))
            row.cell(_label(line.placement))
            row.cell(line.air_date.isoformat())
            row.cell(_label(line.pricing_model))
            row.cell(f"{line.quantity:,}" + (" impr." if cpm else ""), align=Align.R)
            row.cell(_money(line.rate_usd) + (" CPM" if cpm else ""), align=Align.R)
            row.cell(_money(line.amount_usd), align=Align.R)
            row.cell(_latin1(line.note))
        total = table.row(style=_BOLD)
        total.cell("Total", colspan=6)
        total.cell(_money(invoice.total_usd), align=Align.R)
        total.cell("")


def render_pdf(doc: IoDocument) -> bytes:
    """Renders the IO (and its invoice, if any) as an A4 landscape PDF."""
    pdf = _IoPdf(doc.number)
    # Pinned to the issue date so the same IO renders the same bytes.
    pdf.set_creation_date(datetime.combine(doc.issued_on, time(0), tzinfo=UTC))
    pdf.set_title(_latin1(f"Insertion Order {doc.number}"))
    pdf.set_author(_latin1(doc.publisher))
    pdf.set_creator("sponsorflow")
    pdf.set_margins(12, 12, 12)
    pdf.set_auto_page_break(True, margin=16)
    pdf.add_page()

    pdf.set_font(_FONT, "B", 18)
    pdf.cell(0, 10, _latin1(f"Insertion Order {doc.number}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    details = [
        ("Publisher", doc.publisher),
        ("Advertiser", _advertiser(doc)),
        ("Deal", doc.campaign_name),
        ("Issued", doc.issued_on.isoformat()),
        ("Status", _label(doc.status)),
    ]
    if doc.promo_code:
        details.append(("Promo code", doc.promo_code))
    if doc.vanity_url:
        details.append(("Vanity URL", doc.vanity_url))
    _key_values(pdf, details)

    if doc.cancel_reason:
        pdf.ln(2)
        pdf.set_font(_FONT, "B", 10)
        pdf.set_text_color(170, 0, 0)
        pdf.multi_cell(0, 5, _latin1(f"Cancelled: {doc.cancel_reason}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_text_color(0)

    _heading(pdf, "Ad units")
    _units_table(pdf, doc)

    _heading(pdf, "Terms")
    _key_values(
        pdf,
        [
            ("Payment", _payment_terms(doc.payment_terms_days)),
            ("Under-delivery", _policy(doc.underdelivery_policy)),
            ("Measurement", _measurement(doc.measurement_window_days)),
        ],
    )

    if doc.invoice is not None:
        _invoice_section(pdf, doc.invoice)
    return bytes(pdf.output())


# ---------------------------------------------------------------------------------------------
# XLSX


_XL_MONEY = '"$"#,##0.00'
_XL_COUNT = "#,##0"
_XL_DATE = "yyyy-mm-dd"
_XL_SECONDS = '0"s"'
_XL_BOLD = Font(bold=True)
_XL_TITLE = Font(bold=True, size=14)
_XL_HEAD_FILL = PatternFill("solid", start_color="FFEBEBEB")
_XL_TOTAL_BORDER = Border(top=Side(style="thin"))


def _xl_text(text: str) -> str:
    """A text cell that is never evaluated: illegal XML characters dropped, formula-looking text quoted."""
    return neutralise(ILLEGAL_CHARACTERS_RE.sub("", text))


def _xl_value(value: object) -> object:
    if isinstance(value, str):
        # An empty string would still write a (blank) text cell; leave the cell empty instead.
        return _xl_text(value) or None
    return value


def _xl_header(ws: Any, title: str, rows: Sequence[tuple[str, object]]) -> int:
    """Writes the title and label/value block; returns the next free row."""
    ws.cell(row=1, column=1, value=_xl_text(title)).font = _XL_TITLE
    r = 3
    for key, value in rows:
        ws.cell(row=r, column=1, value=_xl_text(key)).font = _XL_BOLD
        cell = ws.cell(row=r, column=2, value=_xl_value(value))
        cell.alignment = Alignment(horizontal="left")
        if isinstance(value, date):
            cell.number_format = _XL_DATE
        r += 1
    return r + 1


def _xl_table(
    ws: Any,
    start_row: int,
    columns: Sequence[tuple[str, float, str | None]],
    rows: Iterable[Sequence[object]],
    total: tuple[int, Decimal],
) -> None:
    """Writes a headed table of (heading, width, number format) columns and a total row."""
    for c, (heading, width, fmt) in enumerate(columns, start=1):
        cell = ws.cell(row=start_row, column=c, value=heading)
        cell.font = _XL_BOLD
        cell.fill = _XL_HEAD_FILL
        if fmt is not None:
            cell.alignment = Alignment(horizontal="right")
        letter = get_column_letter(c)
        ws.column_dimensions[letter].width = max(ws.column_dimensions[letter].width or 0, width)
    r = start_row
    for values in rows:
        r += 1
        for c, value in enumerate(values, start=1):
            cell = ws.cell(row=r, column=c, value=_xl_value(value))
            fmt = columns[c - 1][2]
            if fmt is not None and value is not None:
                cell.number_format = fmt
    if r > start_row:
        ws.auto_filter.ref = f"A{start_row}:{get_column_letter(len(columns))}{r}"
    r += 1
    total_column, amount = total
    for c in range(1, len(columns) + 1):
        ws.cell(row=r, column=c).border = _XL_TOTAL_BORDER
    ws.cell(row=r, column=1, value="Total").font = _XL_BOLD
    cell = ws.cell(row=r, column=total_column, value=amount)
    cell.font = _XL_BOLD
    cell.number_format = _XL_MONEY


def _xl_io_sheet(ws: Any, doc: IoDocument) -> None:
    header: list[tuple[str, object]] = [
        ("Publisher", doc.publisher),
        ("Advertiser", doc.advertiser),
        ("Advertiser domain", doc.advertiser_domain or ""),
        ("Deal", doc.campaign_name),
        ("Issued", doc.issued_on),
        ("Status", _label(doc.status)),
        ("Promo code", doc.promo_code or ""),
        ("Vanity URL", doc.vanity_url or ""),
        ("Payment terms", _payment_terms(doc.payment_terms_days)),
        ("Under-delivery", _policy(doc.underdelivery_policy)),
        ("Measurement window", _measurement(doc.measurement_window_days)),
    ]
    if doc.cancel_reason:
        header.append(("Cancelled", doc.cancel_reason))
    start = _xl_header(ws, f"Insertion Order {doc.number}", header)
    columns: list[tuple[str, float, str | None]] = [
        ("Show", 36, None),
        ("Placement", 12, None),
        ("Format", 12, None),
        ("Insertion", 12, None),
        ("Air date", 12, _XL_DATE),
        ("Duration", 10, _XL_SECONDS),
        ("Pricing", 10, None),
        ("CPM (USD)", 12, _XL_MONEY),
        ("Impressions goal", 17, _XL_COUNT),
        ("Flat (USD)", 13, _XL_MONEY),
        ("Price (USD)", 14, _XL_MONEY),
        ("Status", 12, None),
        ("Delivered impressions", 21, _XL_COUNT),
        ("Make-good of", 38, None),
        ("Unit ID", 38, None),
    ]
    rows = (
        (
            u.show_name,
            _label(u.placement),
            _label(u.format),
            _label(u.insertion),
            u.air_date,
            u.duration_s,
            _label(u.pricing_model),
            u.cpm_usd,
            u.impressions_goal,
            u.flat_usd,
            u.price_usd,
            _label(u.status),
            u.delivered_impressions,
            u.makegood_of,
            u.id,
        )
        for u in doc.units
    )
    _xl_table(ws, start, columns, rows, total=(11, doc.total_usd))


def _xl_invoice_sheet(ws: Any, doc: IoDocument, invoice: Invoice) -> None:
    header: list[tuple[str, object]] = [
        ("Insertion order", doc.number),
        ("Publisher", doc.publisher),
        ("Advertiser", doc.advertiser),
        ("Issued", invoice.issued_at.date()),
        ("Due", invoice.due_date),
        ("Payment terms", _payment_terms(invoice.payment_terms_days)),
        ("Currency", invoice.currency),
    ]
    start = _xl_header(ws, f"Invoice {invoice.number}", header)
    columns: list[tuple[str, float, str | None]] = [
        ("Show", 36, None),
        ("Placement", 12, None),
        ("Air date", 12, _XL_DATE),
        ("Pricing", 10, None),
        ("Quantity", 12, _XL_COUNT),
        ("Rate (USD)", 12, _XL_MONEY),
        ("Amount (USD)", 14, _XL_MONEY),
        ("Note", 60, None),
        ("Unit ID", 38, None),
    ]
    rows = (
        (
            line.show_name,
            _label(line.placement),
            line.air_date,
            _label(line.pricing_model),
            line.quantity,
            line.rate_usd,
            line.amount_usd,
            line.note,
            line.ad_unit_id,
        )
        for line in invoice.lines
    )
    _xl_table(ws, start, columns, rows, total=(7, invoice.total_usd))


def render_xlsx(doc: IoDocument) -> bytes:
    """Renders the IO as a workbook: an "Insertion Order" sheet, and an "Invoice" sheet when invoiced."""
    wb = Workbook()
    # Pinned to the issue date so the document metadata does not change between renders.
    wb.properties.created = datetime.combine(doc.issued_on, time(0))
    wb.properties.creator = "sponsorflow"
    ws = wb.active
    ws.title = "Insertion Order"
    _xl_io_sheet(ws, doc)
    if doc.invoice is not None:
        _xl_invoice_sheet(wb.create_sheet("Invoice"), doc, doc.invoice)
    out = BytesIO()
    wb.save(out)
    return out.getvalue()
