"""The replay corpus and its guards: where histories live, what a history's commands are, and the
history contract (the payload models and patch ids of every workflow).

Layout: `tests/histories/<workflow type>/<scenario>.json`, then `<scenario>@<UTC stamp>.json` for
each later recording of the same scenario (files are added, never overwritten). The newest file of a
scenario is the one with the greatest stamp; the file without a stamp is its oldest.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import inspect
import json
import sys
import typing
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory

from workflows.deals import DealWorkflow
from workflows.imports import ImportWorkflow
from workflows.io import IoBookingWorkflow
from workflows.maintenance import MaintenanceWorkflow
from workflows.matching import MatchRecalculationWorkflow
from workflows.webhooks import WebhookEndpointWorkflow

HISTORIES = Path(__file__).resolve().parent.parent / "histories"
# Outside tests/histories/ so that every *.json under it is a history.
CONTRACT = HISTORIES.parent / "workflow_contract.json"
ROOT = HISTORIES.parent.parent

# Every workflow the worker can register (test_replay checks this against worker.registrations).
WORKFLOWS: tuple[type, ...] = (
    DealWorkflow,
    IoBookingWorkflow,
    ImportWorkflow,
    MatchRecalculationWorkflow,
    MaintenanceWorkflow,
    WebhookEndpointWorkflow,
)

# What to do when a guard fails; every message ends with it.
WHAT_TO_DO = """\
Running workflows replay their histories against the new code. Do one of:
  1. the change alters what running workflows do: guard it with `workflow.patched("<new-id>")`
     (old runs take the old branch), then `make record-histories` to add the new paths to
     tests/histories/ and refresh tests/workflow_contract.json;
  2. the change is compatible (a new optional field with a default, a handler that only reads):
     `make record-histories` refreshes the contract and records what changed; say why in the commit.
The release procedure is in README.md, "Releasing a workflow change"."""


# ---------------------------------------------------------------------------------------------
# Files


def scenario_of(path: Path) -> str:
    """The scenario a recorded file belongs to: its name up to the first '@'."""
    return path.stem.split("@", 1)[0]


def recorded_files() -> list[Path]:
    """Every recorded history, `<workflow type>/<name>.json`."""
    return sorted(HISTORIES.glob("*/*.json"))


def versions(workflow_type: str, scenario: str) -> list[Path]:
    """The recordings of one scenario, oldest first (the unstamped file, then by stamp)."""
    folder = HISTORIES / workflow_type
    found = [p for p in folder.glob("*.json") if scenario_of(p) == scenario]
    return sorted(found, key=lambda p: ("@" in p.stem, p.stem))


def newest(workflow_type: str, scenario: str) -> Path | None:
    """The latest recording of a scenario, if any."""
    found = versions(workflow_type, scenario)
    return found[-1] if found else None


def new_path(workflow_type: str, scenario: str, now: datetime | None = None) -> Path:
    """Where the next recording of a scenario goes: never a file that exists."""
    folder = HISTORIES / workflow_type
    first = folder / f"{scenario}.json"
    if not first.exists():
        return first
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    path, n = folder / f"{scenario}@{stamp}.json", 1
    while path.exists():
        n += 1
        path = folder / f"{scenario}@{stamp}-{n}.json"
    return path


def write_new(path: Path, history: WorkflowHistory) -> None:
    """Writes a recording; mode 'x' refuses to replace a file, whatever the caller computed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("x", encoding="utf-8") as f:
        f.write(history.to_json())


def load(path: Path) -> WorkflowHistory:
    """A recorded history (its workflow id is `<workflow type>/<file name>`)."""
    return WorkflowHistory.from_json(f"{path.parent.name}/{path.name}", path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Commands


def _payload_json(payloads: Any) -> Any:
    try:
        return json.loads(payloads.payloads[0].data)
    except (IndexError, ValueError):
        return None


def _command(event: HistoryEvent) -> str | None:
    """The command (or message) a workflow task produced, named by what it does; None for the rest.

    Workflow task events, activity starts and completions, signals and update requests are left out:
    their place depends on timing; what the workflow decided does not.
    """
    t = event.event_type
    if t == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
        return f"activity {event.activity_task_scheduled_event_attributes.activity_type.name}"
    if t == EventType.EVENT_TYPE_MARKER_RECORDED:
        marker = event.marker_recorded_event_attributes
        details = marker.details
        if marker.marker_name == "core_patch" and "patch-data" in details:
            data = _payload_json(details["patch-data"]) or {}
            return f"patch {data.get('id')}" + (" (deprecated)" if data.get("deprecated") else "")
        if marker.marker_name == "core_local_activity" and "data" in details:
            data = _payload_json(details["data"]) or {}
            return f"local activity {data.get('activity_type')}"
        return f"marker {marker.marker_name}"
    if t == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
        keys = event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
        return "upsert " + ",".join(sorted(keys))
    if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
        name = event.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
        return f"accept update {name}"
    if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED:
        outcome = event.workflow_execution_update_completed_event_attributes.outcome
        return "complete update" + (" (failed)" if outcome.HasField("failure") else "")
    if t == EventType.EVENT_TYPE_TIMER_STARTED:
        return "start timer"
    if t == EventType.EVENT_TYPE_TIMER_CANCELED:
        return "cancel timer"
    if t in _NAMED:
        return _NAMED[t]
    return None


_NAMED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED: "cancel activity",
    EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED: "modify properties",
    EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED: "start child workflow",
    EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED: "signal external workflow",
    EventType.EVENT_TYPE_REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED: "cancel external workflow",
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED: "WORKFLOW TASK FAILED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "complete workflow",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "fail workflow",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: "cancel workflow",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: "continue as new",
}


def command_sequence(history: WorkflowHistory) -> list[str]:
    """The workflow's commands in history order (see _command)."""
    return [c for c in (_command(e) for e in history.events) if c is not None]


def patch_ids(commands: Iterable[str]) -> set[str]:
    """The patch ids a command sequence records."""
    return {c.split(" ")[1] for c in commands if c.startswith("patch ")}


def judge_commands(recorded: list[str], fresh: list[str], *, name: str) -> tuple[str, str]:
    """The command guard's verdict on one scenario: ("same" | "patched" | "changed", message).

    "patched": the commands differ, and today's code records a patch id the recording does not
    have: the change is behind a patch (old runs replay the old branch); record the new path.
    "changed": the commands differ with no new patch id: running workflows would fail replay.
    """
    if recorded == fresh:
        return "same", ""
    diff = "\n".join(
        difflib.unified_diff(recorded, fresh, "newest recording", "today's code", lineterm="", n=2)
    )
    head = f"{name}: today's code issues other commands than the newest recording of this scenario:\n{diff}\n"
    added = sorted(patch_ids(fresh) - patch_ids(recorded))
    if added:
        return "patched", (
            f"{head}The new path is behind the new patch id(s) {added}: running workflows take the old "
            "branch. Record it: `make record-histories` (adds a file, keeps the old one)."
        )
    return "changed", head + WHAT_TO_DO


# ---------------------------------------------------------------------------------------------
# The history contract: payload models and patch ids, read from the source


def _class_node(cls: type) -> ast.ClassDef:
    tree = ast.parse(Path(inspect.getfile(cls)).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            return node
    raise LookupError(f"no class {cls.__name__} in {inspect.getfile(cls)}")


def _decorator(deco: ast.expr) -> tuple[str, dict[str, Any]] | None:
    """('run'|'signal'|'update'|'query'|'defn', keyword constants) for a `workflow.X` decorator."""
    call = deco if isinstance(deco, ast.Call) else None
    target = call.func if call else deco
    if not (
        isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id == "workflow"
    ):
        return None
    kwargs = {
        k.arg: k.value.value
        for k in (call.keywords if call else [])
        if k.arg and isinstance(k.value, ast.Constant)
    }
    return target.attr, kwargs


def workflow_type(cls: type) -> str:
    """The workflow type name: `@workflow.defn(name=...)` or the class name."""
    for deco in _class_node(cls).decorator_list:
        found = _decorator(deco)
        if found and found[0] == "defn":
            return str(found[1].get("name", cls.__name__))
    raise LookupError(f"{cls.__name__} is not a @workflow.defn class")


def handlers(cls: type) -> list[tuple[str, str, str]]:
    """(kind, message name, method) of the run method and every signal, update and query."""
    found = []
    for node in _class_node(cls).body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for deco in node.decorator_list:
            d = _decorator(deco)
            if d and d[0] in ("run", "signal", "update", "query"):
                name = "run" if d[0] == "run" else str(d[1].get("name", node.name))
                found.append((d[0], name, node.name))
    return found


def source_patch_ids(cls: type) -> list[str]:
    """The ids of every workflow.patched / workflow.deprecate_patch call in the workflow's module."""
    module = sys.modules[cls.__module__]
    tree = ast.parse(Path(inspect.getfile(cls)).read_text(encoding="utf-8"))
    ids = set()
    for node in ast.walk(tree):
        called = _decorator(node.func) if isinstance(node, ast.Call) and node.args else None
        if called is None or called[0] not in ("patched", "deprecate_patch"):
            continue
        assert isinstance(node, ast.Call)
        arg = node.args[0]
        if isinstance(arg, ast.Constant):
            ids.add(str(arg.value))
        elif isinstance(arg, ast.Name):
            ids.add(str(getattr(module, arg.id)))
        else:
            raise ValueError(f"{cls.__name__}: a patch id must be a literal or a module constant")
    return sorted(ids)


def _without_docstrings(node: ast.AST) -> ast.AST:
    for sub in ast.walk(node):
        body = getattr(sub, "body", None)
        if (
            isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            sub.body = body[1:] or [ast.Pass()]
    return node


def _module_definitions(module_name: str) -> dict[str, ast.AST]:
    """The module-level definitions of a domain module: def, class, NAME = ..., by name."""
    module = sys.modules[module_name]
    tree = ast.parse(Path(inspect.getfile(module)).read_text(encoding="utf-8"))
    found: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    found[t.id] = node
    return found


def domain_rules(cls: type) -> dict[str, str]:
    """What a workflow decides with from domain/: `module.name` -> a digest of its definition.

    Every name the workflow's module imports from a `domain` module, and every definition of the
    same module those refer to (transitively): a rule such as `check_transition` or
    `DEFAULT_STALL_DAYS` decides the workflow's commands as much as the workflow's own code.
    Comments, docstrings and formatting do not count.
    """
    tree = ast.parse(Path(inspect.getfile(cls)).read_text(encoding="utf-8"))
    todo: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "domain":
            todo += [(node.module, a.name) for a in node.names]
    digests: dict[str, str] = {}
    while todo:
        module_name, name = todo.pop()
        obj = getattr(sys.modules[module_name], name, None)
        home = getattr(obj, "__module__", module_name) if callable(obj) else module_name
        if not str(home).startswith("domain"):
            continue
        key = f"{home}.{name}"
        if key in digests:
            continue
        definitions = _module_definitions(str(home))
        node = definitions.get(name)
        if node is None:
            continue
        dumped = ast.dump(_without_docstrings(node), annotate_fields=False)
        digests[key] = hashlib.sha256(dumped.encode()).hexdigest()[:16]
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id in definitions and sub.id != name:
                todo.append((str(home), sub.id))
    return dict(sorted(digests.items()))


def _schema(tp: Any) -> Any:
    return TypeAdapter(tp).json_schema()


def workflow_contract(cls: type) -> dict[str, Any]:
    """What a workflow's history carries besides commands: its payload schemas, and its patch ids."""
    models: dict[str, Any] = {}
    for kind, name, method in handlers(cls):
        hints = typing.get_type_hints(cls.__dict__[method])
        returns = hints.pop("return", None)
        models[f"{kind} {name}"] = {
            "args": [_schema(tp) for tp in hints.values()],
            "returns": _schema(returns),
        }
    return {"patches": source_patch_ids(cls), "payloads": models, "rules": domain_rules(cls)}


def current_contract(workflows: Iterable[type] = WORKFLOWS) -> dict[str, Any]:
    """The contract of today's code, by workflow type."""
    return {workflow_type(cls): workflow_contract(cls) for cls in workflows}


def write_contract() -> Path:
    """Refreshes the committed contract (tests/workflow_contract.json) from today's code."""
    CONTRACT.write_text(json.dumps(current_contract(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return CONTRACT


def _flatten(schema: Any, prefix: str = "") -> dict[str, Any]:
    """Every property of a schema and its $defs, as 'Model.field' -> its schema."""
    out: dict[str, Any] = {}
    if not isinstance(schema, dict):
        return out
    for name, sub in schema.get("$defs", {}).items():
        out.update(_flatten(sub, name))
    title = prefix or schema.get("title", "")
    for field, sub in schema.get("properties", {}).items():
        out[f"{title}.{field}"] = sub
    if not schema.get("properties"):
        out[title or "(value)"] = {k: v for k, v in schema.items() if k != "$defs"}
    return out


def _describe_change(old: Any, new: Any) -> list[str]:
    before, after = _flatten(old), _flatten(new)
    lines = [f"    {k} added" for k in sorted(after.keys() - before.keys())]
    lines += [f"    {k} removed" for k in sorted(before.keys() - after.keys())]
    lines += [f"    {k} changed" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]
    return lines or ["    (the schema changed: required fields, titles or defaults)"]


def contract_problems(committed: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Why the committed contract no longer holds, one message per workflow; [] when it holds.

    A payload change passes only if the workflow's set of patch ids grew since the contract was
    written (the new behaviour is behind a patch); a new workflow needs its contract recorded.
    """
    problems = []
    for wf, now in sorted(current.items()):
        was = committed.get(wf)
        if was is None:
            problems.append(f"{wf} has no recorded contract (a new workflow): run `make record-histories`.")
            continue
        changed = []
        for handler in sorted(was["payloads"].keys() | now["payloads"].keys()):
            old, new = was["payloads"].get(handler), now["payloads"].get(handler)
            if old == new:
                continue
            if old is None:
                changed.append(f"  {handler}: new handler")
            elif new is None:
                changed.append(f"  {handler}: removed (running workflows may still be sent it)")
            else:
                for part, (o, n) in {
                    "argument": (old["args"], new["args"]),
                    "result": (old["returns"], new["returns"]),
                }.items():
                    if o != n:
                        changed.append(f"  {handler} {part}:")
                        pairs = zip(o, n, strict=False) if part == "argument" else [(o, n)]
                        for a, b in pairs:
                            changed += _describe_change(a, b)
                        if part == "argument" and len(o) != len(n):
                            changed.append(f"    {len(o)} arguments before, {len(n)} now")
        was_rules, now_rules = was.get("rules", {}), now.get("rules", {})
        for rule in sorted(was_rules.keys() | now_rules.keys()):
            if was_rules.get(rule) != now_rules.get(rule):
                how = "new" if rule not in was_rules else "gone" if rule not in now_rules else "changed"
                changed.append(f"  {rule}: {how} (a domain/ rule the workflow decides with)")
        if not changed:
            continue
        grown = set(now["patches"]) - set(was["patches"])
        if grown:
            continue
        problems.append(
            f"{wf}: the payloads its history carries or the rules it decides with changed, and no new "
            "workflow.patched id came "
            f"with the change (patches: {sorted(now['patches']) or 'none'}):\n" + "\n".join(changed)
        )
    return problems


def load_contract() -> dict[str, Any]:
    """The committed contract (empty if none was ever written)."""
    if not CONTRACT.exists():
        return {}
    data: dict[str, Any] = json.loads(CONTRACT.read_text(encoding="utf-8"))
    return data
