"""The replay corpus against today's code (tests/histories/<workflow type>/<scenario>.json).

1. Every recorded history replays, with every workflow registered and the pydantic converter: a
   change that running workflows could not replay fails here.
2. Every scenario of tests/helpers/scenarios.py, run fresh against real servers, issues the same
   commands as its newest recording, unless a new workflow.patched id appears in them: a change
   to what a workflow decides, for new runs too, fails here until it is behind a patch (or is
   recorded on purpose with `make record-histories`).
The payload contract (models and patch ids) is checked in tests/unit/test_history_guards.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from db.embedded import EmbeddedDatabase
from db.engine import SessionMaker
from settings import Settings
from tests.helpers.histories import (
    HISTORIES,
    WORKFLOWS,
    command_sequence,
    judge_commands,
    load,
    newest,
    recorded_files,
    scenario_of,
    workflow_type,
)
from tests.helpers.scenarios import SCENARIOS, Ctx, Scenario, time_skipping_env


def _replayer() -> Replayer:
    return Replayer(workflows=list(WORKFLOWS), data_converter=pydantic_data_converter)


@pytest.mark.parametrize("path", recorded_files(), ids=lambda p: str(p.relative_to(HISTORIES)))
async def test_a_recorded_history_replays(path: Path) -> None:
    history = load(path)
    started = history.events[0].workflow_execution_started_event_attributes.workflow_type.name
    assert started == path.parent.name, (
        f"{path} is a {started} history: move it to tests/histories/{started}/"
    )
    await _replayer().replay_workflow(history)


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=workflow_type)
def test_every_workflow_has_recordings_and_scenarios(workflow: type) -> None:
    name = workflow_type(workflow)
    assert list((HISTORIES / name).glob("*.json")), f"no recording of {name}: run `make record-histories`"
    assert any(s.workflow is workflow for s in SCENARIOS), (
        f"no scenario drives {name} (tests/helpers/scenarios.py)"
    )


def test_the_corpus_knows_every_workflow_the_worker_runs(sm: SessionMaker) -> None:
    from worker import registrations

    registered, _ = registrations(Settings(), sm)
    assert set(registered) == set(WORKFLOWS), "add the workflow to WORKFLOWS in tests/helpers/histories.py"
    folders = {p.name for p in HISTORIES.iterdir() if p.is_dir()}
    assert folders <= {workflow_type(w) for w in WORKFLOWS}, "a folder of tests/histories/ names no workflow"


def test_every_scenario_has_a_recording() -> None:
    missing = [s.id for s in SCENARIOS if newest(s.workflow_type, s.name) is None]
    assert not missing, f"scenarios never recorded: {missing}; run `make record-histories`"
    legacy = sorted(
        {f"{p.parent.name}/{scenario_of(p)}" for p in recorded_files()} - {s.id for s in SCENARIOS}
    )
    # Files no scenario produces any more (older paths): replayed above, never compared.
    assert legacy == ["IoBookingWorkflow/loaded_by_the_workflow_full_life"], legacy


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
async def test_a_scenario_issues_the_commands_it_recorded(
    scenario: Scenario, database: EmbeddedDatabase, sm: SessionMaker, temporal_env: WorkflowEnvironment
) -> None:
    last = newest(scenario.workflow_type, scenario.name)
    if last is None:
        pytest.fail(f"{scenario.id} was never recorded: run `make record-histories`")
    if scenario.server == "time-skipping":
        async with time_skipping_env() as ts:
            history = await scenario.drive(Ctx(database, ts, sm))
    else:
        history = await scenario.drive(Ctx(database, temporal_env, sm))
    await _replayer().replay_workflow(history)
    verdict, message = judge_commands(
        command_sequence(load(last)), command_sequence(history), name=str(last.relative_to(HISTORIES))
    )
    if verdict == "patched":
        pytest.skip(message)
    assert verdict == "same", message
