"""Inputs and results of MatchRecalculationWorkflow and its activity."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MatchRecalcInput(BaseModel):
    """Starts one recalculation of a tenant's matches."""

    tenant_id: str
    # What started it: "schedule", "manual" (POST /api/match/recalculate) or "import".
    trigger: str = "manual"
    top_n: int = 50
    # Advertisers scored per NumPy call: bounds memory at shows x chunk x 7 float64 arrays.
    chunk_advertisers: int = 64


class RecalculateInput(BaseModel):
    """The activity's input: `run_key` names this run so a retry after the commit writes nothing."""

    tenant_id: str
    run_key: str
    trigger: str
    top_n: int
    chunk_advertisers: int


class MatchRecalcResult(BaseModel):
    """What a recalculation did (also the payload of match.recalculated)."""

    generation: int
    shows: int
    advertisers: int
    pairs_scored: int
    pairs_excluded: int
    matches_written: int
    duration_s: float
    # Seconds per phase (load, score, write, swap): where a slow recalculation spent its time.
    phases: dict[str, float] = Field(default_factory=dict)
