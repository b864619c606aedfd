"""Start options built by workflows.starters: what an IO's workflow and an import's start with."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from domain.imports import ImportWorkflowInput
from domain.io import (
    AdFormat,
    BookIoInput,
    Insertion,
    IoWorkflowInput,
    Placement,
    PricingModel,
    UnitRequest,
)
from workflows import search_attributes as sa
from workflows.starters import import_start_options, io_start_options


def _unit(show_id: str, air: date, flat: int) -> UnitRequest:
    return UnitRequest(
        show_id=show_id,
        placement=Placement.MID_ROLL,
        format=AdFormat.HOST_READ,
        insertion=Insertion.BAKED_IN,
        air_date=air,
        duration_s=60,
        pricing_model=PricingModel.FLAT,
        flat_usd=Decimal(flat),
    )


def test_io_start_options_name_the_io_its_first_show_and_its_booking() -> None:
    """One run per IO id, joined while it runs; the first show to air and the booking's summary."""
    booking = BookIoInput(
        campaign_id="c1",
        ad_units=[_unit("late-show", date(2031, 3, 9), 3000), _unit("early-show", date(2031, 3, 2), 1500)],
    )
    inp = IoWorkflowInput(tenant_id="t1", io_id="io1", book_via_update=True)
    options = io_start_options(inp, "tq", booking=booking, advertiser_id="adv1", advertiser_name="Acme")
    assert options["id"] == "io/t1/io1"
    assert options["task_queue"] == "tq"
    assert options["id_conflict_policy"] == WorkflowIDConflictPolicy.USE_EXISTING
    assert options["id_reuse_policy"] == WorkflowIDReusePolicy.REJECT_DUPLICATE
    attrs = options["search_attributes"]
    assert attrs.get(sa.TENANT_ID) == "t1"
    assert attrs.get(sa.ADVERTISER_ID) == "adv1"
    assert attrs.get(sa.SHOW_ID) == "early-show"
    assert attrs.get(sa.IO_STATUS) == "booking"
    assert options["static_summary"] == "IO: Acme x 2 shows, $4,500, next air 2031-03-02"


def test_import_start_options_make_every_attempt_the_same_start() -> None:
    """Same id, joined while running, refused once finished: a retried start never runs twice."""
    inp = ImportWorkflowInput(tenant_id="t1", import_id="i1", kind="shows", filename="shows.csv")
    options = import_start_options(inp, "tq", "Import: shows.csv")
    assert options == {
        "id": "import/t1/i1",
        "task_queue": "tq",
        "static_summary": "Import: shows.csv",
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
    }
