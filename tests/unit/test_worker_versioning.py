"""Worker versioning's settings and rules, without a server: the build id default, the knobs'
environment variables, which behaviour each workflow runs with, and the non-determinism record."""

from __future__ import annotations

import ast
import inspect
import logging
import subprocess
import textwrap
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from temporalio.common import VersioningBehavior

from settings import Settings, default_build_id, git_revision, package_version
from worker import _nondeterminism, deployment_config, registrations
from workflows.starters import running_on_version_query
from workflows.versioning import BEHAVIOURS, VERSIONED, versioned

ROOT = Path(__file__).resolve().parents[2]


def test_build_id_default_is_the_package_version_plus_the_git_revision() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert package_version() == version
    assert default_build_id() == f"{version}+{rev}"
    assert Settings(worker_build_id=None).build_id == f"{version}+{rev}"


def test_build_id_without_git_is_the_version_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_revision(tmp_path) is None
    assert default_build_id(tmp_path) == package_version()
    monkeypatch.setenv("PATH", str(tmp_path))  # no git binary at all
    assert git_revision(tmp_path / "nowhere") is None


def test_versioning_knobs_are_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert defaults.worker_versioning is True
    assert defaults.worker_deployment == "sponsorflow"
    assert defaults.temporal_dev_task_problems_threshold == 1
    monkeypatch.setenv("SPONSORFLOW_WORKER_DEPLOYMENT", "podcasts")
    monkeypatch.setenv("SPONSORFLOW_WORKER_BUILD_ID", "2026.12.1")
    monkeypatch.setenv("SPONSORFLOW_WORKER_VERSIONING", "false")
    monkeypatch.setenv("SPONSORFLOW_WORKER_PROMOTE", "true")
    monkeypatch.setenv("SPONSORFLOW_TEMPORAL_DEV_TASK_PROBLEMS_THRESHOLD", "3")
    s = Settings()
    assert (s.worker_deployment, s.build_id, s.worker_versioning, s.promotes) == (
        "podcasts",
        "2026.12.1",
        False,
        True,
    )
    assert s.dev_server_flags() == [
        "--dynamic-config-value",
        "system.numConsecutiveWorkflowTaskProblemsToTriggerSearchAttribute=3",
    ]


def test_promotion_defaults_to_development_only() -> None:
    assert Settings().promotes is True
    production = Settings(environment="production", admin_token="a-real-secret")
    assert production.promotes is False
    assert (
        Settings(environment="production", admin_token="a-real-secret", worker_promote=True).promotes is True
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("worker_deployment", "sponsor.flow"), ("worker_deployment", ""), ("worker_build_id", "a b")],
)
def test_bad_deployment_names_and_build_ids_are_refused_naming_the_field(field: str, value: str) -> None:
    values: dict[str, Any] = {field: value}
    with pytest.raises(ValidationError) as err:
        Settings(**values)
    assert field in str(err.value)


def _defn(cls: type) -> tuple[str, str | None]:
    """(type name, behaviour name) from a class's @workflow.defn, read from its source (as
    tests/unit/test_layers.py reads type names)."""
    node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(node, ast.ClassDef)
    for deco in node.decorator_list:
        if isinstance(deco, ast.Call) and ast.unparse(deco.func) == "workflow.defn":
            kw = {k.arg: ast.unparse(k.value) for k in deco.keywords}
            name = kw["name"].strip("\"'") if "name" in kw else cls.__name__
            return name, kw.get("versioning_behavior")
        if ast.unparse(deco) == "workflow.defn":
            return cls.__name__, None
    raise AssertionError(f"{cls.__name__} has no @workflow.defn")


def test_every_registered_workflow_has_its_versioning_behaviour() -> None:
    settings = Settings(database_url="postgresql+asyncpg://unused@/x")
    workflows, _ = registrations(settings, None)  # type: ignore[arg-type]
    assert set(workflows) == set(VERSIONED)
    for base in workflows:
        name, behaviour = _defn(versioned(base))
        assert name == _defn(base)[0], "a versioned class keeps its base's type name"
        assert behaviour == BEHAVIOURS[name].name
        # The base classes stay free of a behaviour: unversioned workers (tests) register them.
        assert _defn(base)[1] is None
    assert {n for n, b in BEHAVIOURS.items() if b == VersioningBehavior.PINNED} == {
        "CsvImportWorkflow",
        "MatchRecalculationWorkflow",
    }


def test_deployment_config_is_the_settings_version_or_none() -> None:
    assert deployment_config(Settings(worker_versioning=False)) is None
    config = deployment_config(Settings(worker_deployment="podcasts", worker_build_id="1.2.3"))
    assert config is not None and config.use_worker_versioning
    assert (config.version.deployment_name, config.version.build_id) == ("podcasts", "1.2.3")
    assert config.default_versioning_behavior == VersioningBehavior.AUTO_UPGRADE
    assert running_on_version_query("podcasts", "1.2.3") == (
        'ExecutionStatus="Running" AND TemporalWorkerDeploymentVersion="podcasts:1.2.3"'
    )


def _core_record(fields: dict[str, str]) -> logging.LogRecord:
    record = logging.LogRecord("sdk", logging.WARNING, __file__, 1, "Failing workflow task", None, None)
    record.temporal_log = SimpleNamespace(fields=fields)
    return record


def test_a_core_nondeterminism_record_yields_its_run_and_message() -> None:
    failure = (
        'Failure { failure: Some(Failure { message: "[TMPRL1100] Nondeterminism error: Activity machine '
        'does not handle this event: HistoryEvent(id: 6, TimerStarted)", source: "" }), '
        "force_cause: NonDeterministicError }"
    )
    assert _nondeterminism(_core_record({"run_id": "r-1", "failure": failure})) == (
        "r-1",
        "[TMPRL1100] Nondeterminism error: Activity machine does not handle this event: "
        "HistoryEvent(id: 6, TimerStarted)",
    )
    other = 'Failure { failure: Some(Failure { message: "boom", source: "" }), force_cause: Unspecified }'
    assert _nondeterminism(_core_record({"run_id": "r-2", "failure": other})) is None
    assert _nondeterminism(logging.LogRecord("x", logging.WARNING, __file__, 1, "hi", None, None)) is None


def test_compose_runs_two_worker_versions_of_one_deployment_side_by_side() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    v1, v2 = services["worker-v1"], services["worker-v2"]
    env1, env2 = v1["environment"], v2["environment"]
    for env in (env1, env2):
        assert env["SPONSORFLOW_WORKER_VERSIONING"] == "true"
        assert env["SPONSORFLOW_WORKER_PROMOTE"] == "false", "only the release makes a version current"
    assert env1["SPONSORFLOW_WORKER_DEPLOYMENT"] == env2["SPONSORFLOW_WORKER_DEPLOYMENT"] == "sponsorflow"
    assert env1["SPONSORFLOW_TEMPORAL_TASK_QUEUE"] == env2["SPONSORFLOW_TEMPORAL_TASK_QUEUE"]
    assert env1["SPONSORFLOW_WORKER_BUILD_ID"] != env2["SPONSORFLOW_WORKER_BUILD_ID"]
    # v2 is built from this checkout; v1 runs the image of the release before and is never rebuilt.
    assert "build" in v2 and "build" not in v1
    assert v1["command"] == v2["command"] == ["sponsorflow", "worker"]
    # A server that has Worker Deployments and TemporalReportedProblems, flagging at the first failure.
    assert services["temporal"]["image"] == "temporalio/server:1.32.0"
    dynamic = yaml.safe_load(compose["configs"]["temporal-dynamic-config"]["content"])
    assert dynamic["system.numConsecutiveWorkflowTaskProblemsToTriggerSearchAttribute"] == [{"value": 1}]
