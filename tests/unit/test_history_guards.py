"""The guards of the replay corpus, and that each of them can fail.

- the payload contract (tests/workflow_contract.json): the schemas of every workflow's run,
  signal, update and query payloads, and its workflow.patched ids read from the source by ast;
- the command guard: a scenario's commands against its newest recording;
- the recorder's file rules: added, never overwritten.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import create_model
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from domain.deals import DealWorkflowInput
from tests.helpers import histories
from tests.helpers.histories import (
    HISTORIES,
    WHAT_TO_DO,
    WORKFLOWS,
    command_sequence,
    contract_problems,
    current_contract,
    handlers,
    judge_commands,
    load,
    load_contract,
    newest,
    source_patch_ids,
    workflow_type,
)
from workflows.deals import DealWorkflow
from workflows.io import IoBookingWorkflow


def test_the_committed_contract_holds() -> None:
    problems = contract_problems(load_contract(), current_contract())
    assert not problems, "\n\n".join(problems) + "\n\n" + WHAT_TO_DO


def test_the_contract_names_every_payload_and_patch() -> None:
    contract = current_contract()
    assert sorted(contract) == sorted(workflow_type(w) for w in WORKFLOWS)
    assert sorted(contract["DealWorkflow"]["payloads"]) == [
        "query state",
        "run run",
        "signal resync",
        "update change_stage",
    ]
    assert "delivery-overdue" in contract["IoBookingWorkflow"]["patches"]
    assert "match-recalculation-after-import" in contract["CsvImportWorkflow"]["patches"]
    run = contract["DealWorkflow"]["payloads"]["run run"]
    assert run["args"][0]["title"] == "DealWorkflowInput" and run["returns"]["title"] == "DealWorkflowResult"


def _with_run_input(contract: dict[str, Any], model: type) -> dict[str, Any]:
    changed = copy.deepcopy(contract)
    changed["DealWorkflow"]["payloads"]["run run"]["args"][0] = model.model_json_schema()
    return changed


def test_a_changed_input_model_fails_the_contract_guard_unless_a_patch_came_with_it() -> None:
    committed = current_contract()
    # The same model with a required field more: old histories' inputs would not validate.
    grown = create_model("DealWorkflowInput", __base__=DealWorkflowInput, region=(str, ...))
    changed = _with_run_input(committed, grown)
    (problem,) = contract_problems(committed, changed)
    assert problem.startswith("DealWorkflow: the payloads its history carries or the rules it decides with")
    assert "run run argument:" in problem and "DealWorkflowInput.region added" in problem

    patched = copy.deepcopy(changed)
    patched["DealWorkflow"]["patches"].append("deal-region")
    assert contract_problems(committed, patched) == []


def test_the_contract_holds_the_domain_rules_each_workflow_decides_with() -> None:
    rules = current_contract()["DealWorkflow"]["rules"]
    # Imported by the workflow, and what those refer to in their module (allowed_targets is
    # called by check_transition, not imported by the workflow).
    for name in ("check_transition", "DEFAULT_STALL_DAYS", "allowed_targets"):
        assert f"domain.stages.{name}" in rules, sorted(rules)
    assert "domain.io.build_invoice" in current_contract()["IoBookingWorkflow"]["rules"]


def test_a_changed_domain_rule_fails_the_contract_guard_unless_a_patch_came_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import domain.stages

    committed = current_contract()
    source = Path(domain.stages.__file__).read_text(encoding="utf-8")
    changed_source = source.replace("Stage.PROPOSAL: 21", "Stage.PROPOSAL: 28")
    assert changed_source != source, "the stall limit of proposal is no longer written as expected"
    copy_of = tmp_path / "stages.py"
    copy_of.write_text(changed_source, encoding="utf-8")
    monkeypatch.setattr(domain.stages, "__file__", str(copy_of))
    now = current_contract()
    (problem,) = contract_problems(committed, now)
    assert problem.startswith("DealWorkflow:")
    assert "domain.stages.DEFAULT_STALL_DAYS: changed (a domain/ rule the workflow decides with)" in problem

    patched = copy.deepcopy(now)
    patched["DealWorkflow"]["patches"].append("stall-proposal-28")
    assert contract_problems(committed, patched) == []
    # A comment or a docstring is no rule.
    copy_of.write_text(source.replace('"""', '"""Reworded. ', 1) + "\n# a comment\n", encoding="utf-8")
    assert contract_problems(committed, current_contract()) == []


def test_a_removed_handler_and_a_new_workflow_fail_the_contract_guard() -> None:
    committed = current_contract()
    changed = copy.deepcopy(committed)
    del changed["DealWorkflow"]["payloads"]["signal resync"]
    changed["NewWorkflow"] = {"patches": [], "payloads": {}}
    problems = contract_problems(committed, changed)
    assert any("signal resync: removed" in p for p in problems)
    assert any(p.startswith("NewWorkflow has no recorded contract") for p in problems)


_MODULE = """
from temporalio import workflow

NOTICE = "stage-notice"


@workflow.defn(name="Renamed", versioning_behavior=None)
class Probe:
    @workflow.run
    async def run(self, n: int) -> str:
        if workflow.patched(NOTICE):
            pass
        workflow.deprecate_patch("old-rule")
        return ""

    @workflow.signal(name="poke")
    def on_poke(self, why: str) -> None:
        pass

    @workflow.query
    def seen(self) -> int:
        return 0
"""


def test_handlers_and_patch_ids_are_read_from_the_source(tmp_path: Path) -> None:
    path = tmp_path / "probe_workflow.py"
    path.write_text(_MODULE)
    spec = importlib.util.spec_from_file_location("probe_workflow", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["probe_workflow"] = module
    try:
        spec.loader.exec_module(module)
        probe = module.Probe
        assert workflow_type(probe) == "Renamed"
        assert handlers(probe) == [
            ("run", "run", "run"),
            ("signal", "poke", "on_poke"),
            ("query", "seen", "seen"),
        ]
        assert source_patch_ids(probe) == ["old-rule", "stage-notice"]
        contract = histories.workflow_contract(probe)
        assert contract["payloads"]["signal poke"] == {
            "args": [{"type": "string"}],
            "returns": {"type": "null"},
        }
    finally:
        del sys.modules["probe_workflow"]
    assert source_patch_ids(IoBookingWorkflow) == ["delivery-overdue"]


def _without(history: WorkflowHistory, command: str) -> WorkflowHistory:
    """The history minus the events that are `command` (a workflow that stopped issuing it)."""
    kept = [
        e for e in history.events if command_sequence(WorkflowHistory(history.workflow_id, [e])) != [command]
    ]
    assert len(kept) < len(history.events), f"{command} is not in the history"
    return WorkflowHistory(history.workflow_id, kept)


def test_a_modified_history_fails_the_command_guard() -> None:
    path = newest("DealWorkflow", "stall_timer_fired")
    assert path is not None
    recorded = load(path)
    fresh = _without(recorded, "local activity record_stall")
    verdict, message = judge_commands(command_sequence(recorded), command_sequence(fresh), name="stall")
    assert verdict == "changed"
    assert "-local activity record_stall" in message and "workflow.patched" in message
    assert judge_commands(command_sequence(recorded), command_sequence(recorded), name="stall") == (
        "same",
        "",
    )


def test_a_difference_behind_a_new_patch_passes_the_command_guard_and_asks_for_a_recording() -> None:
    path = newest("IoBookingWorkflow", "delivery_overdue")
    assert path is not None
    patched = command_sequence(load(path))
    assert "patch delivery-overdue" in patched
    # As if the recording predated the patch: the same path without the marker and what followed it.
    before = [c for c in patched if c not in ("patch delivery-overdue", "upsert TemporalChangeVersion")]
    verdict, message = judge_commands(before, patched, name="overdue")
    assert verdict == "patched" and "['delivery-overdue']" in message and "make record-histories" in message


async def test_a_history_the_code_did_not_write_fails_replay() -> None:
    """The replay guard: an activity the code does not schedule there is a non-determinism error."""
    path = newest("IoBookingWorkflow", "booking_rejected")
    assert path is not None
    history = load(path)
    events = list(history.events)
    for e in events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            e.activity_task_scheduled_event_attributes.activity_type.name = "reserve_io_v0"
            break
    replayer = Replayer(workflows=list(WORKFLOWS), data_converter=pydantic_data_converter)
    await replayer.replay_workflow(load(path))  # the recording itself replays
    with pytest.raises(Exception, match="(?i)nondetermin"):
        await replayer.replay_workflow(WorkflowHistory(history.workflow_id, events))


def test_recordings_are_added_never_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    from tests.helpers.recorder import decide
    from tests.helpers.scenarios import Scenario

    monkeypatch.setattr(histories, "HISTORIES", tmp_path)
    real = load(HISTORIES / "DealWorkflow" / "life_with_stall.json")
    other = _without(real, "local activity record_stall")

    async def drive(ctx: Any) -> WorkflowHistory:
        return real

    sc = Scenario(DealWorkflow, "life_with_stall", "time-skipping", drive)
    first = decide(sc, real, force=False)
    assert first == tmp_path / "DealWorkflow" / "life_with_stall.json"
    histories.write_new(first, real)
    assert decide(sc, real, force=False) is None  # the same commands: nothing to add
    changed = decide(sc, other, force=False)
    assert changed is not None and changed.name.startswith("life_with_stall@") and not changed.exists()
    histories.write_new(changed, other)
    with pytest.raises(FileExistsError):
        histories.write_new(changed, real)
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    a = histories.new_path("DealWorkflow", "life_with_stall", at)
    histories.write_new(a, other)
    b = histories.new_path("DealWorkflow", "life_with_stall", at)
    assert (a.name, b.name) == (
        "life_with_stall@20300102T030405Z.json",
        "life_with_stall@20300102T030405Z-2.json",
    )
    assert histories.versions("DealWorkflow", "life_with_stall")[0] == first
    assert histories.newest("DealWorkflow", "life_with_stall") == a
    assert decide(sc, real, force=True) not in (None, first)
