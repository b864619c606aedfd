"""The bounded send loop and the backoff that deal and IO writes share (api.fenced).

Fed attempts that answer, time out or are refused as Temporal would answer them: what is
tested is the loop's decisions (resend, pause, give up at the deadline), not Temporal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from temporalio.service import RPCError, RPCStatusCode

from api.fenced import Again, Backoff, NoAnswer, bounded, within_budget


def _script(*steps: BaseException | str) -> tuple[Callable[[], Awaitable[str]], list[float]]:
    """An attempt that raises or answers each step in turn, recording when it was called."""
    calls: list[float] = []
    it = iter(steps)

    async def attempt() -> str:
        calls.append(time.monotonic())
        step = next(it)
        if isinstance(step, BaseException):
            raise step
        return step

    return attempt, calls


def _rpc(code: RPCStatusCode) -> RPCError:
    return RPCError("refused", code, b"")


NO_PAUSE = Backoff(base_s=0.0)


async def test_an_unanswered_attempt_is_resent_until_it_answers() -> None:
    attempt, calls = _script(NoAnswer(), NoAnswer(), "applied")
    answer = await within_budget(attempt, what="t", deadline=time.monotonic() + 5, backoff=NO_PAUSE)
    assert answer == "applied" and len(calls) == 3


async def test_a_retryable_refusal_pauses_by_the_backoff_then_retries() -> None:
    attempt, calls = _script(_rpc(RPCStatusCode.RESOURCE_EXHAUSTED), _rpc(RPCStatusCode.UNAVAILABLE), "ok")
    answer = await within_budget(
        attempt, what="t", deadline=time.monotonic() + 5, backoff=Backoff(base_s=0.05)
    )
    assert answer == "ok"
    assert calls[1] - calls[0] >= 0.09  # 0.05 * 2**1
    assert calls[2] - calls[1] >= 0.19  # 0.05 * 2**2


async def test_a_refusal_that_no_retry_can_change_propagates_at_once() -> None:
    attempt, calls = _script(_rpc(RPCStatusCode.NOT_FOUND), "never")
    with pytest.raises(RPCError) as raised:
        await within_budget(attempt, what="t", deadline=time.monotonic() + 5, backoff=NO_PAUSE)
    assert raised.value.status is RPCStatusCode.NOT_FOUND and len(calls) == 1


def _task_failed_under_the_update() -> RPCError:
    """What the server answers when the workflow task an update rode on failed (WorkflowNotReady)."""
    from google.protobuf.any_pb2 import Any as AnyProto
    from temporalio.api.common.v1 import GrpcStatus
    from temporalio.api.errordetails.v1 import WorkflowNotReadyFailure

    detail = AnyProto()
    detail.Pack(WorkflowNotReadyFailure())
    status = GrpcStatus(code=RPCStatusCode.FAILED_PRECONDITION.value, details=[detail])
    return RPCError(
        "Unable to perform workflow execution update due to unexpected workflow task failure.",
        RPCStatusCode.FAILED_PRECONDITION,
        status.SerializeToString(),
    )


async def test_an_update_whose_workflow_task_failed_is_sent_again() -> None:
    attempt, calls = _script(_task_failed_under_the_update(), "ok")
    answer = await within_budget(attempt, what="t", deadline=time.monotonic() + 5, backoff=NO_PAUSE)
    assert answer == "ok" and len(calls) == 2


async def test_another_failed_precondition_propagates_at_once() -> None:
    attempt, calls = _script(_rpc(RPCStatusCode.FAILED_PRECONDITION), "never")
    with pytest.raises(RPCError):
        await within_budget(attempt, what="t", deadline=time.monotonic() + 5, backoff=NO_PAUSE)
    assert len(calls) == 1


async def test_the_budget_running_out_answers_none_for_the_caller_to_fence_off() -> None:
    attempt, calls = _script(*[NoAnswer()] * 1000)
    deadline = time.monotonic() + 0.3

    async def slow() -> str:
        await asyncio.sleep(0.05)
        return await attempt()

    assert await within_budget(slow, what="t", deadline=deadline, backoff=NO_PAUSE) is None
    assert time.monotonic() >= deadline and 3 <= len(calls) <= 8


async def test_the_first_attempt_runs_even_past_the_deadline() -> None:
    attempt, calls = _script("ok")
    assert await within_budget(attempt, what="t", deadline=time.monotonic() - 1, backoff=NO_PAUSE) == "ok"


async def test_again_asks_for_another_attempt_before_the_deadline_is_looked_at() -> None:
    # An attempt that learned something (the workflow adopted the row) gets its retry even late.
    attempt, calls = _script(Again(), "ok")
    assert await within_budget(attempt, what="t", deadline=time.monotonic() - 1, backoff=NO_PAUSE) == "ok"
    assert len(calls) == 2


def test_the_backoff_doubles_to_its_cap_and_never_sleeps_past_the_deadline() -> None:
    b = Backoff(base_s=0.02, cap_s=0.5)
    assert [b.pause(n, 100) for n in (1, 2, 3, 4, 5, 9)] == [0.04, 0.08, 0.16, 0.32, 0.5, 0.5]
    assert b.pause(5, 0.2) == pytest.approx(0.15)
    assert b.pause(5, 0.01) == 0.0
    jittered = Backoff(base_s=0.02, cap_s=0.5, jitter=True)
    pauses = {jittered.pause(3, 100) for _ in range(50)}
    assert len(pauses) > 1 and all(0.08 <= p <= 0.24 for p in pauses)


async def test_bounded_turns_a_slow_send_into_no_answer_and_a_failed_connect_into_a_retryable_refusal() -> (
    None
):
    async def hangs() -> str:
        await asyncio.sleep(10)
        return "late"

    t0 = time.monotonic()
    with pytest.raises(NoAnswer):
        await bounded(hangs, time.monotonic() + 0.1)
    assert time.monotonic() - t0 < 1

    async def cannot_connect() -> str:
        raise RuntimeError("Failed client connect: connection refused")

    with pytest.raises(RPCError) as raised:
        await bounded(cannot_connect, time.monotonic() + 1)
    assert raised.value.status is RPCStatusCode.UNAVAILABLE
