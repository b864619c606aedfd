"""The outbox cursor's decision (domain.webhooks.settle): observations with a snapshot horizon are
final on the last claim's snapshot xmin, never on time; observations without one keep the time rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from domain.webhooks import Certificate, Observation, held_back, settle

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def _obs(seconds: float, max_event_id: int, horizon_xid: int | None) -> Observation:
    return Observation(at=T0 + timedelta(seconds=seconds), max_event_id=max_event_id, horizon_xid=horizon_xid)


def test_an_observation_with_a_horizon_is_never_final_on_time_alone() -> None:
    # A day old, settle time 0: the old rule would have moved the cursor long ago.
    obs = [_obs(0, 50, horizon_xid=1000)]
    now = T0 + timedelta(days=1)
    assert settle(cursor=10, observations=obs, now=now, settle_seconds=0, certificate=None) == (10, obs)
    # A writer older than xid 1000 is still open (the last claim's xmin is below it).
    cert = Certificate(snapshot_xmin=999, covered_through=80)
    assert settle(cursor=10, observations=obs, now=now, settle_seconds=0, certificate=cert) == (10, obs)


def test_it_is_final_once_the_last_claims_xmin_reached_its_horizon_and_that_claim_covered_it() -> None:
    obs = [_obs(0, 50, horizon_xid=1000), _obs(1, 70, horizon_xid=1010)]
    cert = Certificate(snapshot_xmin=1000, covered_through=80)
    cursor, waiting = settle(cursor=10, observations=obs, now=T0, settle_seconds=300, certificate=cert)
    assert (cursor, waiting) == (50, obs[1:])
    cert = Certificate(snapshot_xmin=5000, covered_through=80)
    assert settle(cursor=10, observations=obs, now=T0, settle_seconds=300, certificate=cert) == (70, [])


def test_a_full_claim_proves_nothing_past_what_its_scan_reached() -> None:
    # The last claim hit its limit at id 40: ids 41..50 that committed late are not queued yet.
    obs = [_obs(0, 50, horizon_xid=1000)]
    cert = Certificate(snapshot_xmin=5000, covered_through=40)
    assert settle(cursor=10, observations=obs, now=T0, settle_seconds=0, certificate=cert) == (10, obs)


def test_observations_from_before_the_patch_keep_the_time_rule() -> None:
    obs = [_obs(0, 50, horizon_xid=None), _obs(100, 60, horizon_xid=None), _obs(101, 70, horizon_xid=2000)]
    cert = Certificate(snapshot_xmin=1500, covered_through=90)
    now = T0 + timedelta(seconds=350)
    cursor, waiting = settle(cursor=10, observations=obs, now=now, settle_seconds=300, certificate=cert)
    assert (cursor, waiting) == (50, obs[1:])
    now = T0 + timedelta(seconds=400)
    cursor, waiting = settle(cursor=10, observations=obs, now=now, settle_seconds=300, certificate=cert)
    assert (cursor, waiting) == (60, obs[2:])


def test_the_cursor_never_moves_back() -> None:
    obs = [_obs(0, 50, horizon_xid=1000)]
    cert = Certificate(snapshot_xmin=5000, covered_through=80)
    assert settle(cursor=90, observations=obs, now=T0, settle_seconds=0, certificate=cert) == (90, [])


def test_held_back_names_the_oldest_waiting_observation_with_a_horizon_once_it_waited_long() -> None:
    obs = [_obs(0, 50, horizon_xid=None), _obs(10, 60, horizon_xid=1000), _obs(20, 70, horizon_xid=1010)]
    assert held_back(obs, T0 + timedelta(seconds=30), after_seconds=60) is None
    assert held_back(obs, T0 + timedelta(seconds=70), after_seconds=60) == obs[1]
    assert held_back(obs[:1], T0 + timedelta(days=1), after_seconds=60) is None


def test_without_in_order_a_later_observation_final_on_time_passes_an_earlier_one_still_held() -> None:
    # Runs recorded before webhook-cancel-keeps-pending: a claim without a horizon (an older worker
    # during a rolling deploy, a database without 0012) is final on time alone and moves the cursor
    # past the horizon observation before it, whose writer (older than xid 1000) is still open.
    obs = [_obs(0, 50, horizon_xid=1000), _obs(5, 70, horizon_xid=None)]
    cert = Certificate(snapshot_xmin=999, covered_through=80)
    now = T0 + timedelta(seconds=400)
    assert settle(cursor=10, observations=obs, now=now, settle_seconds=300, certificate=cert) == (70, [])


def test_in_order_nothing_after_an_observation_still_waiting_moves_the_cursor() -> None:
    obs = [
        _obs(0, 30, horizon_xid=None),
        _obs(1, 50, horizon_xid=1000),
        _obs(5, 70, horizon_xid=None),
        _obs(6, 90, horizon_xid=1020),
    ]
    now = T0 + timedelta(seconds=400)  # every observation without a horizon is final on time
    held = Certificate(snapshot_xmin=999, covered_through=95)
    # The one before the held observation moves the cursor; the held one and all after it wait.
    cursor, waiting = settle(
        cursor=10, observations=obs, now=now, settle_seconds=300, certificate=held, in_order=True
    )
    assert (cursor, waiting) == (30, obs[1:])
    # The writer ended: the walk goes on to the next one that is not final (xid 1020 not reached).
    ended = Certificate(snapshot_xmin=1010, covered_through=95)
    cursor, waiting = settle(
        cursor=10, observations=obs, now=now, settle_seconds=300, certificate=ended, in_order=True
    )
    assert (cursor, waiting) == (70, obs[3:])
    # A later horizon observation already final does not jump a waiting one either.
    obs = [_obs(0, 50, horizon_xid=None), _obs(1, 70, horizon_xid=1000)]
    cert = Certificate(snapshot_xmin=1000, covered_through=80)
    early = T0 + timedelta(seconds=100)  # the first is not final on time yet
    assert settle(cursor=10, observations=obs, now=early, settle_seconds=300, certificate=cert) == (70, [])
    assert settle(
        cursor=10, observations=obs, now=early, settle_seconds=300, certificate=cert, in_order=True
    ) == (10, obs)
