"""Match schedules: each tenant's own offset, and an operator's pause and note survive re-runs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio.client import Client, ScheduleHandle

from workflows.starters import ensure_match_schedule, match_schedule_id, schedule_offset

DAY = timedelta(hours=24)


@pytest.fixture
async def schedules(client: Client) -> AsyncIterator[list[ScheduleHandle]]:
    """Schedules a test made, deleted afterwards so none of them ever fires."""
    made: list[ScheduleHandle] = []
    yield made
    for handle in made:
        await handle.delete()


async def _ensure(client: Client, made: list[ScheduleHandle], tenant_id: str, every: timedelta) -> str:
    result = await ensure_match_schedule(client, tenant_id, "tq-schedules", every)
    handle = client.get_schedule_handle(match_schedule_id(tenant_id))
    if handle.id not in {h.id for h in made}:
        made.append(handle)
    return result


async def test_a_paused_schedule_keeps_its_pause_and_note_and_takes_the_new_interval(
    client: Client, schedules: list[ScheduleHandle]
) -> None:
    tenant_id = str(uuid.uuid4())
    assert await _ensure(client, schedules, tenant_id, DAY) == "created"
    handle = schedules[0]
    await handle.pause(note="paused by ops: holiday freeze")
    paused = await handle.describe()

    # Nothing of ours differs: nothing is written (the schedule's last update stays where it was).
    assert await _ensure(client, schedules, tenant_id, DAY) == "unchanged"
    again = await handle.describe()
    assert again.info.last_updated_at == paused.info.last_updated_at
    assert again.schedule.state.paused and again.schedule.state.note == "paused by ops: holiday freeze"

    # A new interval is applied; the operator's pause and note are not touched.
    six_hours = timedelta(hours=6)
    assert await _ensure(client, schedules, tenant_id, six_hours) == "updated"
    desc = await handle.describe()
    assert desc.schedule.state.paused is True
    assert desc.schedule.state.note == "paused by ops: holiday freeze"
    [interval] = desc.schedule.spec.intervals
    assert interval.every == six_hours
    assert (interval.offset or timedelta(0)) == schedule_offset(tenant_id, six_hours)
    assert desc.schedule.policy.catchup_window == timedelta(hours=1)
    assert desc.schedule.policy.overlap.name == "SKIP"
    assert await _ensure(client, schedules, tenant_id, six_hours) == "unchanged"


async def test_an_unpaused_schedule_stays_unpaused_and_a_hand_edited_spec_is_put_back(
    client: Client, schedules: list[ScheduleHandle]
) -> None:
    tenant_id = str(uuid.uuid4())
    await _ensure(client, schedules, tenant_id, DAY)
    handle = schedules[0]
    desc = await handle.describe()
    assert desc.schedule.state.paused is False
    assert desc.schedule.state.note == "Recalculates this tenant's advertiser-show matches (sponsorflow)."

    from temporalio.client import ScheduleIntervalSpec, ScheduleUpdate, ScheduleUpdateInput

    def hand_edit(inp: ScheduleUpdateInput) -> ScheduleUpdate:
        inp.description.schedule.spec.intervals = [ScheduleIntervalSpec(every=timedelta(minutes=5))]
        return ScheduleUpdate(schedule=inp.description.schedule)

    await handle.update(hand_edit)
    assert await _ensure(client, schedules, tenant_id, DAY) == "updated"
    desc = await handle.describe()
    assert [i.every for i in desc.schedule.spec.intervals] == [DAY]
    assert desc.schedule.state.paused is False


async def test_tenants_get_their_own_offsets_spread_over_the_interval(
    client: Client, schedules: list[ScheduleHandle]
) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    for tenant_id in (a, b):
        await _ensure(client, schedules, tenant_id, DAY)
    offsets = {}
    next_runs = {}
    for tenant_id, handle in zip((a, b), schedules, strict=True):
        desc = await handle.describe()
        [interval] = desc.schedule.spec.intervals
        offsets[tenant_id] = interval.offset or timedelta(0)
        next_runs[tenant_id] = desc.info.next_action_times[0]
        assert offsets[tenant_id] == schedule_offset(tenant_id, DAY)
        assert desc.schedule.spec.jitter == timedelta(minutes=5)
    assert offsets[a] != offsets[b]
    assert next_runs[a] != next_runs[b]
    # Deterministic: the same tenant always lands on the same offset, within the interval.
    assert schedule_offset(a, DAY) == offsets[a]
    many = {schedule_offset(str(uuid.uuid4()), DAY) for _ in range(200)}
    assert all(timedelta(0) <= o < DAY for o in many)
    assert len(many) > 190, "offsets collide: the herd is back"
    # Spread over the whole day, not clustered: every quarter of it gets some.
    assert {int(o / (DAY / 4)) for o in many} == {0, 1, 2, 3}
