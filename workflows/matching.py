"""MatchRecalculationWorkflow: one recalculation of a tenant's matches.

Its Temporal Schedule and the on-demand starts live in workflows/starters.py (client code).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.matching import MatchActivities
    from domain.matching import MatchRecalcInput, MatchRecalcResult, RecalculateInput


@workflow.defn
class MatchRecalculationWorkflow:
    """Scores every advertiser-show pair of one tenant and swaps in the new ranking.

    Rows the scores read may change while a run scores (an import of shows, advertisers or
    downloads completes): the import signals `rows_changed`, and a run that had already begun
    loading runs once more when it is done (continue-as-new), so the ranking ends up reflecting
    the change. Any number of such signals during one run cause one more run, not many.
    """

    def __init__(self) -> None:
        self._loading_began = False
        self._changed_by: str | None = None

    @workflow.signal
    def rows_changed(self, trigger: str) -> None:
        """Shows, advertisers or downloads changed; a run that began before needs another."""
        if self._loading_began and self._changed_by is None:
            self._changed_by = trigger

    @workflow.run
    async def run(self, inp: MatchRecalcInput) -> MatchRecalcResult:
        """One heartbeating activity does the work; its result is the run's result."""
        info = workflow.info()
        workflow.set_current_details(f"Scoring every advertiser-show pair ({inp.trigger})")
        # A signal that started this run (or came with its first task) is already covered.
        self._loading_began = True
        result = await workflow.execute_activity_method(
            MatchActivities.recalculate_matches,
            RecalculateInput(
                tenant_id=inp.tenant_id,
                run_key=f"{info.workflow_id}/{info.run_id}",
                trigger=inp.trigger,
                top_n=inp.top_n,
                chunk_advertisers=inp.chunk_advertisers,
            ),
            start_to_close_timeout=timedelta(hours=2),
            # A worker that dies mid-scoring is noticed within two minutes; the retry starts over.
            heartbeat_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=5), maximum_attempts=10),
        )
        workflow.set_current_details(
            f"{result.pairs_scored:,} pairs scored, {result.pairs_excluded:,} excluded by brand safety, "
            f"{result.matches_written:,} matches written (generation {result.generation}) "
            f"in {result.duration_s:.1f}s"
        )
        if self._changed_by is not None:
            # The features may predate the change: score once more, in a fresh history.
            workflow.continue_as_new(inp.model_copy(update={"trigger": self._changed_by}))
        return result
