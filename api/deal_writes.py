"""Deal writes: create a deal, and move it through the pipeline under the write fence.

A stage change is DealWorkflow's `change_stage` update, sent with update-with-start and fenced
by a request id (api/fenced.py: the protocol deals share with IOs). Three ways to send it, all
answering the same:

- the seed and the answer of a PATCH of the last few seconds are cached (`SeedCache`): the
  update goes out at once and the answer is the previous one plus the move (no database trip);
- a cached seed only: the update goes out at once and the row is read alongside it;
- otherwise (or when either fast path cannot vouch for its answer) the careful path: read the
  row, judge what needs no workflow, send, and resend within the budget, then fence off.

Once the update has been sent it may land: from then on only the fence may answer 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException, status
from sqlalchemy.exc import IntegrityError
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from api import errors
from api.deal_schemas import DealCreate, DealPublic, HistoryEntry, StageChange, entries, public_deal
from api.deps import DATABASE_UNAVAILABLE, TenantDb, parse_id
from api.fenced import (
    Again,
    Answer,
    Backoff,
    NoAnswer,
    begin_keyed,
    bounded,
    fence_or_refuse,
    read_back,
    within_budget,
)
from api.timing import ServerTiming
from db.deals import (
    DealRow,
    HistoryRow,
    deal_seed,
    deal_with_idempotency_key,
    get_deal,
    get_deal_with_history,
    insert_deal,
    missing_party,
)
from db.fences import new_request_id
from domain.deals import ChangeStageInput, ChangeStageResult, DealWorkflowInput
from domain.stages import (
    Precondition,
    Stage,
    TransitionError,
    check_transition,
    etag,
    is_open,
    judged_without_workflow,
    weighted_value,
)
from settings import Settings
from workflows.deals import (
    FORBIDDEN_TRANSITION,
    INVALID_REQUEST,
    PRECONDITION_FAILED,
    REQUEST_ABANDONED,
    DealWorkflow,
)
from workflows.starters import deal_start_options, deal_workflow_id

log = logging.getLogger("sponsorflow.api.deals")

WHAT = "the stage change"
_SCOPE = "deal-stage"
# How long a PATCH may build on the previous answer instead of reading the row: a deal's other
# fields (name, value) can change by import, so this bounds how stale they can look.
_ANSWER_TTL_S = 5.0
_MAX_CACHED_HISTORY = 200
# A deal's update is refused with RESOURCE_EXHAUSTED when 10 are in flight (the server's cap):
# a short, jittered pause spreads the retries of concurrent moves of one deal.
STAGE_CHANGE_BACKOFF = Backoff(base_s=0.02, cap_s=0.5, jitter=True)


class SeedCache:
    """Recently seen deals: their workflow seed and the last answer this process gave.

    A seed holds what a run starts from; everything that changes with moves is re-read by the
    run itself, so a stale seed costs at most a run that learns the deal is closed. A recent
    answer lets the next move skip the database altogether when the workflow confirms that its
    move started from the stage entry that answer showed (otherwise the row is read).
    """

    def __init__(self, max_entries: int = 50_000) -> None:
        self._max = max_entries
        self._seeds: dict[tuple[uuid.UUID, uuid.UUID], DealWorkflowInput] = {}
        self._answers: dict[tuple[uuid.UUID, uuid.UUID], tuple[DealPublic, float]] = {}

    def get(self, tenant_id: uuid.UUID, campaign_id: uuid.UUID) -> DealWorkflowInput | None:
        """The cached seed of a deal of this tenant, if any."""
        return self._seeds.get((tenant_id, campaign_id))

    def recent(self, tenant_id: uuid.UUID, campaign_id: uuid.UUID, max_age: float) -> DealPublic | None:
        """The last answer about this deal, if younger than max_age seconds."""
        hit = self._answers.get((tenant_id, campaign_id))
        if hit is None or time.monotonic() - hit[1] > max_age:
            return None
        return hit[0]

    def put(
        self,
        tenant_id: uuid.UUID,
        campaign_id: uuid.UUID,
        seed: DealWorkflowInput,
        answer: DealPublic | None = None,
    ) -> None:
        """Remembers a deal's seed, and the answer just given (the cache empties itself when full)."""
        if len(self._seeds) >= self._max:
            self._seeds.clear()
            self._answers.clear()
        key = (tenant_id, campaign_id)
        self._seeds[key] = seed
        if answer is not None and len(answer.history) <= _MAX_CACHED_HISTORY:
            self._answers[key] = (answer, time.monotonic())
        else:
            self._answers.pop(key, None)


def workflow_input(row: DealRow, settings: Settings) -> DealWorkflowInput:
    """Seeds a DealWorkflow from the deal's row (also for deals that only exist in Postgres)."""
    return deal_seed(row=row, stall_days=settings.stall_days, moves_per_run=settings.deal_moves_per_run)


def start_options(inp: DealWorkflowInput, settings: Settings) -> dict[str, Any]:
    """Workflow start options shared by create and update-with-start."""
    return deal_start_options(inp, settings.temporal_task_queue)


async def start_deal_workflow(client: Client, row: DealRow, settings: Settings) -> None:
    """Starts the deal's workflow, or finds it already running."""
    inp = workflow_input(row, settings)
    await client.start_workflow(DealWorkflow.run, inp, **start_options(inp, settings))


async def read_deal(db: TenantDb, cid: uuid.UUID) -> tuple[DealRow | None, list[HistoryRow]]:
    """The deal's row and history as one snapshot, or (None, [])."""
    async with db.tx() as session:
        return await get_deal_with_history(session=session, campaign_id=cid)


async def load_deal(db: TenantDb, campaign_id: str, settings: Settings) -> DealPublic:
    """The deal as clients see it (404 naming the id as sent when this tenant has none)."""
    row, history = await read_deal(db, parse_id(campaign_id, "deal"))
    if row is None:
        raise errors.not_found("deal", campaign_id)
    return public_deal(row, entries(history), settings)


async def create_deal(
    *,
    db: TenantDb,
    client: Client,
    settings: Settings,
    seeds: SeedCache,
    body: DealCreate,
    idempotency_key: str | None,
) -> DealPublic:
    """Writes the deal (or finds the one this Idempotency-Key created) and starts its DealWorkflow."""
    if idempotency_key and (existing := await _by_idempotency_key(db, idempotency_key)) is not None:
        return await load_deal(db, str(existing), settings)
    try:
        row = await _insert(db, body, idempotency_key)
    except IntegrityError as exc:
        if idempotency_key and "uq_campaigns_idempotency" in str(exc.orig):
            existing = await _by_idempotency_key(db, idempotency_key)  # a concurrent twin won
            if existing is not None:
                return await load_deal(db, str(existing), settings)
        raise errors.duplicate(body.external_id) from None
    seeds.put(db.tenant_id, row.deal.id, workflow_input(row, settings))
    if is_open(body.stage):
        try:
            await start_deal_workflow(client, row, settings)
        except (RPCError, RuntimeError) as exc:
            # RuntimeError: the lazy client could not connect. The row is the record; the first
            # stage PATCH starts the workflow lazily (update-with-start), so the deal is not
            # lost if Temporal blips here.
            log.warning("deal %s saved but its workflow did not start: %s", row.deal.id, exc)
    return await load_deal(db, str(row.deal.id), settings)


async def _by_idempotency_key(db: TenantDb, key: str) -> uuid.UUID | None:
    async with db.tx() as session:
        return await deal_with_idempotency_key(session=session, key=key)


async def _insert(db: TenantDb, body: DealCreate, idempotency_key: str | None) -> DealRow:
    async with db.tx() as session:
        missing = await missing_party(session=session, advertiser_id=body.advertiser_id, show_id=body.show_id)
        if missing is not None:
            what, value = (
                ("advertiser", body.advertiser_id) if missing == "advertiser_id" else ("show", body.show_id)
            )
            raise errors.unprocessable(
                ["body", missing], f"{what} {value} not found in this tenant", "not_found"
            )
        campaign = await insert_deal(
            session=session,
            tenant_id=db.tenant_id,
            advertiser_id=body.advertiser_id,
            show_id=body.show_id,
            name=body.name,
            value_usd=body.value_usd,
            stage=body.stage,
            at=datetime.now(UTC),
            expected_close=body.expected_close,
            lost_reason=body.lost_reason,
            owner_email=body.owner_email,
            external_id=body.external_id,
            idempotency_key=idempotency_key,
        )
        row = await get_deal(session=session, campaign_id=campaign.id)
        assert row is not None
    return row


async def change_stage(
    *,
    db: TenantDb,
    client: Client,
    settings: Settings,
    seeds: SeedCache,
    campaign_id: str,
    body: StageChange,
    precondition: Precondition | None,
    idempotency_key: str | None,
    timing: ServerTiming,
) -> Answer[DealPublic]:
    """Moves a deal (`campaign_id` as sent, already known to parse): the fenced update, answered."""
    cid = parse_id(campaign_id, "deal")
    deadline = time.monotonic() + settings.update_budget_seconds
    if idempotency_key is None:
        request_id = new_request_id()
    else:
        keyed = await begin_keyed(
            db,
            settings,
            key=f"{_SCOPE}:{cid}:{idempotency_key}",
            payload={"stage": body.stage.value, "reason": body.reason},
            entity_type="deal",
            entity_id=str(cid),
            reused="stage change of this deal",
        )
        if keyed.status == "replay":
            # An earlier request with this key was applied: answer what it did.
            await nudge(client, db.tenant_id, cid)
            replay = await read_back(lambda: load_deal(db, campaign_id, settings), what=WHAT)
            return Answer(replay, replayed=True)
        assert keyed.request_id is not None
        request_id = keyed.request_id
    move = ChangeStageInput(
        stage=body.stage,
        reason=body.reason,
        request_id=request_id,
        expected_stage=precondition.stage if precondition else None,
        expected_entered_at=precondition.entered_at if precondition else None,
    )
    request = _StageMove(db, client, settings, seeds, campaign_id, cid, move, precondition, deadline, timing)
    return Answer(await request.run())


class _StageMove:
    """One stage change in flight: its fast paths, its careful path, and how it gives up."""

    def __init__(
        self,
        db: TenantDb,
        client: Client,
        settings: Settings,
        seeds: SeedCache,
        campaign_id: str,
        cid: uuid.UUID,
        move: ChangeStageInput,
        precondition: Precondition | None,
        deadline: float,
        timing: ServerTiming,
    ) -> None:
        self.db, self.client, self.settings, self.seeds = db, client, settings, seeds
        self.campaign_id, self.cid, self.move = campaign_id, cid, move
        assert move.request_id is not None
        self.request_id: str = move.request_id
        self.precondition, self.deadline, self.timing = precondition, deadline, timing
        self.sent = False  # once sent, the update may land: only the fence may answer 503
        self.nudged = False
        self.seed: DealWorkflowInput | None = None

    async def run(self) -> DealPublic:
        """The answer: by a fast path when the cache allows and it can vouch for it, else carefully."""
        tenant = self.db.tenant_id
        seed = self.seeds.get(tenant, self.cid)
        if (
            seed is not None
            and is_open(seed.stage)
            and not (self.precondition and self.precondition.unmatchable)
        ):
            self.sent = True
            recent = self.seeds.recent(tenant, self.cid, _ANSWER_TTL_S)
            if recent is not None:
                # Just answered about this deal: if the workflow's move starts where that answer
                # left it, the new answer is that one plus the move, no database round trip.
                answered = await self._from_recent(seed, recent)
            else:
                # Seen before: the update goes out at once and the read runs alongside it.
                answered = await self._with_known_seed(seed)
            if answered is not None:
                self.seeds.put(tenant, self.cid, _reseed(seed, answered), answered)
                return answered
        return await self._careful()

    async def _send(self, seed: DealWorkflowInput) -> ChangeStageResult:
        """One bounded update-with-start attempt, the request id as the update's id.

        Bounded because an update lost in a run that was closing would otherwise hold the request
        open; a resend carries the same update id, so the server answers it once.
        """
        with self.timing.measure("temporal"):
            return await bounded(
                lambda: self.client.execute_update_with_start_workflow(
                    DealWorkflow.change_stage,
                    self.move,
                    id=self.request_id,
                    start_workflow_operation=WithStartWorkflowOperation(
                        DealWorkflow.run, seed, **start_options(seed, self.settings)
                    ),
                ),
                self.deadline,
            )

    def _fast_refusal(self, exc: WorkflowUpdateFailedError, current: Stage) -> HTTPException | None:
        """A fast path's answer to a rejected update; None when the write failed (the fence must say)."""
        failure = update_failed(exc, current, self.move.stage, str(self.cid))
        return None if _write_failed(exc, failure) else failure

    async def _from_recent(self, seed: DealWorkflowInput, recent: DealPublic) -> DealPublic | None:
        """Sends the update and builds the answer on the previous one when they join up exactly."""
        try:
            result = await self._send(seed)
        except WorkflowUpdateFailedError as exc:
            if workflow_stage(exc) is not None:
                # Judged from the workflow's stage, which the last answer cannot vouch for (a
                # write behind its back): the careful path reads the row, repairs and answers.
                return None
            if (failure := self._fast_refusal(exc, recent.stage)) is None:
                return None  # the write failed: the careful path asks the fence
            raise failure from None
        except (NoAnswer, RPCError):
            return None
        answered = answer_on_recent(recent, result)
        if answered is None:
            # Someone else moved the deal since: read it.
            with self.timing.measure("reread"):
                return await read_back(lambda: load_deal(self.db, str(self.cid), self.settings), what=WHAT)
        return answered

    async def _with_known_seed(self, seed: DealWorkflowInput) -> DealPublic | None:
        """Sends the update with a cached seed while reading; None hands over to the careful path.

        The seed's stage may be stale: a run it starts re-reads the row before deciding anything.
        """
        read = asyncio.create_task(read_deal(self.db, self.cid))
        try:
            result = await self._send(seed)
        except WorkflowUpdateFailedError as exc:
            row, _ = await read
            if row is None:
                raise errors.not_found("deal", str(self.cid)) from None
            if workflow_stage(exc) not in (None, Stage(row.deal.stage)):
                return None  # the workflow and the row disagree: the careful path repairs and retries
            if (failure := self._fast_refusal(exc, Stage(row.deal.stage))) is None:
                return None  # the write failed: the careful path asks the fence
            raise failure from None
        except (NoAnswer, RPCError):
            await asyncio.gather(read, return_exceptions=True)
            return None
        try:
            row, history = await read
        except DATABASE_UNAVAILABLE:
            # The move is applied; the read that ran alongside it met a database that is away.
            row, history = await read_back(lambda: read_deal(self.db, self.cid), what=WHAT)
        if row is None:
            raise errors.not_found("deal", str(self.cid))
        return answer_after(row, history, result, self.settings)

    async def _careful(self) -> DealPublic:
        """Reads, judges and sends until answered within the budget; then the fence decides."""
        try:
            answered = await within_budget(
                self._attempt,
                what=f"stage change of deal {self.cid}",
                deadline=self.deadline,
                backoff=STAGE_CHANGE_BACKOFF,
            )
        except RPCError as exc:
            log.error("Temporal refused the update of deal %s: %s", self.campaign_id, exc)
            return await self._give_up("Temporal refused it")
        if answered is None:
            answered = await self._give_up("the stage change was not confirmed in time")
            assert self.seed is not None  # every attempt that reaches the budget's check read the row
            self.seeds.put(self.db.tenant_id, self.cid, _reseed(self.seed, answered), answered)
        return answered

    async def _attempt(self) -> DealPublic:
        """One round of the careful path: read the row, judge it, send; raises to be retried."""
        try:
            with self.timing.measure("read"):
                row, history = await read_deal(self.db, self.cid)
        except DATABASE_UNAVAILABLE:
            if not self.sent:
                raise  # nothing sent: the generic 503 is true
            if time.monotonic() >= self.deadline:
                return await self._give_up("the database is away")
            await asyncio.sleep(0.2)
            raise Again from None
        if row is None:
            raise errors.not_found("deal", self.campaign_id)
        self.seed = workflow_input(row, self.settings)
        self.seeds.put(self.db.tenant_id, self.cid, self.seed)
        current, entered_at = Stage(row.deal.stage), row.deal.stage_changed_at
        if self.precondition is not None and not self.precondition.holds(current, entered_at):
            return await self._refuse(errors.stage_moved(current, etag(current, entered_at)))
        if judged_without_workflow(current, self.move.stage):
            # A closed deal has no running workflow: its rules need no Temporal round trip.
            try:
                check_transition(current, self.move.stage, self.move.reason)
            except TransitionError as exc:
                return await self._refuse(errors.transition_refused(exc))
            return public_deal(row, entries(history), self.settings)
        self.sent = True
        try:
            result = await self._send(self.seed)
        except WorkflowUpdateFailedError as exc:
            return await self._failed(exc, current)
        return await self._answer(row, history, result)

    async def _failed(self, exc: WorkflowUpdateFailedError, current: Stage) -> DealPublic:
        """The answer to a rejected update, or Again once when the workflow must adopt the row."""
        seen = workflow_stage(exc)
        if seen is not None and seen is not current and not self.nudged:
            # The workflow judged the move from a stage the row has left (a write it never
            # learned of): let it adopt the row, then ask again.
            self.nudged = True
            await nudge(self.client, self.db.tenant_id, self.cid)
            raise Again from None
        failure = update_failed(exc, current, self.move.stage, self.campaign_id)
        if _write_failed(exc, failure):
            # The write itself failed (its activity ran out of attempts): its last attempt may
            # still have committed, so only the fence can say which.
            return await self._give_up("the write failed")
        if failure.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
            raise failure from None
        return await self._refuse(failure)

    async def _answer(self, row: DealRow, history: list[HistoryRow], result: ChangeStageResult) -> DealPublic:
        answered = answer_after(row, history, result, self.settings)
        if answered is None:
            # Other moves interleaved: answer with one consistent snapshot of the row and its history.
            with self.timing.measure("reread"):
                answered = await read_back(
                    lambda: load_deal(self.db, self.campaign_id, self.settings), what=WHAT
                )
        assert self.seed is not None
        self.seeds.put(self.db.tenant_id, self.cid, _reseed(self.seed, answered), answered)
        return answered

    async def _refuse(self, refusal: HTTPException) -> DealPublic:
        """Refuses the request, unless an earlier attempt of it, sent before, was applied after all.

        A refusal judged after an unanswered attempt may be about the deal that attempt moved (its
        write committed, its answer was lost): the fence says whether it was applied (then the
        answer is 200) and, if not, fences it off so it cannot land after this refusal.
        """
        if not self.sent:
            raise refusal
        return await self._settle(refusal)

    async def _give_up(self, why: str) -> DealPublic:
        """Fences the request off (503: never applied), or finds that its write won (200)."""
        return await self._settle(_not_applied(why))

    async def _settle(self, refusal: HTTPException) -> DealPublic:
        await fence_or_refuse(
            self.db,
            request_id=self.request_id,
            entity_type="deal",
            entity_id=str(self.cid),
            what=WHAT,
            refusal=refusal,
        )
        # The write landed, but the workflow never told us: it may have been written inside a
        # workflow task the server lost. The workflow adopts the row on this nudge (and the
        # maintenance workflow would find it anyway).
        await nudge(self.client, self.db.tenant_id, self.cid)
        return await read_back(lambda: load_deal(self.db, str(self.cid), self.settings), what=WHAT)


async def nudge(client: Client, tenant_id: uuid.UUID, cid: uuid.UUID) -> None:
    """Asks the deal's workflow to re-read its row (best effort: a signal, bounded)."""
    handle = client.get_workflow_handle(deal_workflow_id(str(tenant_id), str(cid)))
    try:
        await asyncio.wait_for(handle.signal(DealWorkflow.resync), timeout=2.0)
    except (TimeoutError, RPCError, RPCTimeoutOrCancelledError, RuntimeError) as exc:
        log.info("could not ask deal %s to resync: %s", cid, exc)


def _not_applied(why: str) -> errors.ApiError:
    return errors.not_applied(f"{why}: it was not applied, and it never will be; retry")


def _write_failed(exc: WorkflowUpdateFailedError, failure: HTTPException) -> bool:
    """Whether the update failed in its write (its last attempt may have committed): not a
    refusal, not the fence's own abandonment; only the fence can then say what happened."""
    cause = exc.cause
    abandoned = isinstance(cause, ApplicationError) and cause.type == REQUEST_ABANDONED
    return failure.status_code == status.HTTP_503_SERVICE_UNAVAILABLE and not abandoned


def update_failed(
    exc: WorkflowUpdateFailedError, current: Stage, target: Stage, campaign_id: str
) -> HTTPException:
    """The HTTP answer of an update DealWorkflow rejected (or failed: a 503)."""
    cause = exc.cause
    kind = cause.type if isinstance(cause, ApplicationError) else None
    if isinstance(cause, ApplicationError) and kind in (FORBIDDEN_TRANSITION, PRECONDITION_FAILED):
        details = cause.details[0] if cause.details else {}
        now_stage = Stage(details.get("current", current.value))
        if kind == PRECONDITION_FAILED:
            return errors.stage_moved(
                now_stage, etag(now_stage, datetime.fromisoformat(details["stage_entered_at"]))
            )
        allowed = [Stage(s) for s in details.get("allowed", [])]
        return errors.transition_refused(TransitionError(now_stage, target, allowed, cause.message))
    if isinstance(cause, ApplicationError) and kind == INVALID_REQUEST:
        return errors.unprocessable(["body"], cause.message)
    if kind == REQUEST_ABANDONED:
        return _not_applied("the stage change was superseded before it was written")
    log.error("stage update of deal %s failed: %s", campaign_id, exc)
    return errors.unavailable("the stage change could not be recorded; retry")


def workflow_stage(exc: WorkflowUpdateFailedError) -> Stage | None:
    """The stage a forbidden-move rejection was judged from (None for any other failure)."""
    cause = exc.cause
    if isinstance(cause, ApplicationError) and cause.type == FORBIDDEN_TRANSITION and cause.details:
        current = cause.details[0].get("current")
        return Stage(current) if current else None
    return None


def _reseed(seed: DealWorkflowInput, deal: DealPublic) -> DealWorkflowInput:
    """The seed with the stage the deal was last seen at (a closed deal then skips Temporal)."""
    return seed.model_copy(
        update={
            "stage": deal.stage,
            "stage_entered_at": deal.stage_changed_at,
            "lost_reason": deal.lost_reason,
        }
    )


def answer_on_recent(recent: DealPublic, result: ChangeStageResult) -> DealPublic | None:
    """The previous answer plus the workflow's move, when the move starts where that answer left off.

    None when someone else moved the deal since (the caller reads it).
    """
    move, state = result.move, result.state
    seen = (recent.stage, recent.stage_changed_at)
    if move is not None and seen == (move.from_stage, move.from_entered_at):
        entry = HistoryEntry(from_=move.from_stage, to=move.to_stage, at=move.at, reason=move.reason)
        history = [*recent.history, entry]
    elif move is None and seen == (state.stage, state.stage_entered_at):
        history = recent.history
    else:
        return None
    return recent.model_copy(
        update={
            "stage": state.stage,
            "probability": state.probability,
            "weighted_value_usd": weighted_value(recent.value_usd, state.probability),
            "stage_changed_at": state.stage_entered_at,
            "days_in_stage": recent.days_in_stage if move is None else 0,
            "lost_reason": state.lost_reason,
            "history": history,
        }
    )


def answer_after(
    row: DealRow, history: list[HistoryRow], result: ChangeStageResult, settings: Settings
) -> DealPublic | None:
    """The deal after the update, from a read taken just before or just after it committed.

    Returns None when other moves came in between, so the caller reads a fresh snapshot.
    """
    c, move, state = row.deal, result.move, result.state
    seen = (c.stage, c.stage_changed_at)
    after = (state.stage.value, state.stage_entered_at)
    answered = entries(history)
    if move is not None and seen == (move.from_stage.value, move.from_entered_at):
        answered.append(HistoryEntry(from_=move.from_stage, to=move.to_stage, at=move.at, reason=move.reason))
    elif seen != after:
        return None
    c.stage, c.stage_changed_at = after
    c.probability = state.probability
    c.lost_reason = state.lost_reason
    return public_deal(row, answered, settings)
