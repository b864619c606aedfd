"""The house rules on imports, checked on the source (ast, nothing imported or executed).

- activities never import a workflow module (workflows.starters, which names workflows by their
  type names, and workflows.search_attributes are the two they may use);
- a workflow module (workflows/ but starters.py) imports no Temporal client or service code,
  no db/ or api/ and not the starters: the sandbox loads only deterministic code;
- workflows.starters imports no workflow module, so activities -> starters never closes a loop;
- worker.py does not import cli.py (cli runs the worker: one direction only); domain/ imports no other folder;
- telemetry.py (tracing and logging setup) imports no project module at run time: the API, the worker,
  settings and the CLI all use it;
- no import cycle between the project's modules (imports inside functions count too);
- no code reads a private attribute of the Temporal SDK (`handle._start_workflow_response`).

Each rule is a function of a source tree, so the tests at the bottom also feed them small
trees that break each rule and check that they say so.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import temporalio

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("activities", "api", "db", "domain", "workflows")
TOP_MODULES = ("cli", "settings", "telemetry", "worker")
# Where private SDK attributes are looked for: the product, its tests and benchmarks.
PRIVATE_SCAN = (*PACKAGES, "tests", "bench")

STARTERS = "workflows.starters"
# What activities may import from workflows/: neither imports a workflow module.
ACTIVITY_MAY_USE = {STARTERS, "workflows.search_attributes"}
# What the sandbox must never load through a workflow module.
NOT_IN_WORKFLOWS = ("temporalio.client", "temporalio.service", "temporalio.testing", "db", "api", STARTERS)


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _files(root: Path, dirs: tuple[str, ...], modules: tuple[str, ...] = ()) -> Iterator[Path]:
    for d in dirs:
        yield from sorted((root / d).rglob("*.py"))
    for m in modules:
        if (root / f"{m}.py").exists():
            yield root / f"{m}.py"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_module(root: Path, name: str) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports(tree: ast.Module, module: str, root: Path, *, runtime_only: bool) -> Iterator[str]:
    """Every module an import statement loads (`from a import b`: a, and a.b if it is a module)."""

    def walk(node: ast.AST) -> Iterator[ast.AST]:
        for child in ast.iter_child_nodes(node):
            if runtime_only and isinstance(child, ast.If) and _is_type_checking(child.test):
                yield from (n for stmt in child.orelse for n in [stmt, *walk(stmt)])
                continue
            yield child
            yield from walk(child)

    package = module.rsplit(".", 1)[0] if "." in module else ""
    for node in walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: max(len(package.split(".")) - node.level + 1, 0)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{a.name}" for a in node.names if _is_module(root, f"{base}.{a.name}"))


@cache
def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def import_graph(root: Path, *, runtime_only: bool = True) -> dict[str, set[str]]:
    """Module -> every module it imports (project modules and outside ones, as written)."""
    graph: dict[str, set[str]] = {}
    for path in _files(root, PACKAGES, TOP_MODULES):
        name = _module_name(root, path)
        graph[name] = set(_imports(_parsed(path), name, root, runtime_only=runtime_only))
    return graph


def _project_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Only the edges between the project's own modules."""
    return {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _names(targets: set[str], prefix: str, *, allowed: set[str] = frozenset()) -> set[str]:
    """The targets in `prefix`, but for those in (or named from) an allowed module."""
    return {t for t in targets if _under(t, prefix) and not any(_under(t, a) for a in allowed)}


def activities_import_no_workflow(root: Path) -> list[str]:
    """Activities reach workflows only through the starters (and the search attribute keys)."""
    graph = import_graph(root, runtime_only=False)
    found = []
    for module, targets in graph.items():
        if module.startswith("activities"):
            for t in sorted(_names(targets, "workflows", allowed=ACTIVITY_MAY_USE) - {"workflows"}):
                found.append(f"{module} imports {t}")
    return found


def workflow_modules_are_sandbox_safe(root: Path) -> list[str]:
    """A workflow module imports no client, service, db/, api/ or starters code."""
    graph = import_graph(root, runtime_only=False)
    found = []
    for module, targets in graph.items():
        if module.startswith("workflows") and module != STARTERS:
            for banned in NOT_IN_WORKFLOWS:
                for t in sorted(_names(targets, banned)):
                    found.append(f"{module} imports {t}")
    return found


def starters_import_no_workflow(root: Path) -> list[str]:
    """The starters name workflows by their type names: importing one would close a loop."""
    targets = import_graph(root, runtime_only=False).get(STARTERS, set())
    imported = _names(targets, "workflows", allowed={"workflows.search_attributes"}) - {"workflows"}
    return [f"{STARTERS} imports {t}" for t in sorted(imported)]


def worker_imports_no_cli(root: Path) -> list[str]:
    """`sponsorflow worker` (cli) runs worker.main; the worker needs nothing of the CLI back."""
    graph = import_graph(root, runtime_only=False)
    return [f"worker imports {t}" for t in sorted(_names(graph.get("worker", set()), "cli"))]


def domain_imports_no_other_folder(root: Path) -> list[str]:
    """domain/ is pure: it imports nothing of the other folders or top-level modules."""
    graph = import_graph(root, runtime_only=False)
    others = (*(p for p in PACKAGES if p != "domain"), *TOP_MODULES)
    return [
        f"{module} imports {t}"
        for module, targets in graph.items()
        if module.startswith("domain")
        for other in others
        for t in sorted(_names(targets, other))
    ]


def telemetry_imports_no_project_module(root: Path) -> list[str]:
    """telemetry.py sits under everything that sets up a process: it imports none of them back."""
    targets = import_graph(root).get("telemetry", set())
    others = (*PACKAGES, *(m for m in TOP_MODULES if m != "telemetry"))
    return [f"telemetry imports {t}" for other in others for t in sorted(_names(targets, other))]


def import_cycles(root: Path) -> list[str]:
    """Strongly connected groups of project modules (Tarjan): each is an import cycle."""
    edges = _project_edges(import_graph(root))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[str] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(" <-> ".join(sorted(group)))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


@cache
def sdk_private_names() -> frozenset[str]:
    """Private attributes and methods the Temporal SDK defines on its own objects."""
    names: set[str] = set()
    sdk = Path(temporalio.__file__).parent
    for path in sdk.rglob("*.py"):
        if path.relative_to(sdk).parts[0] in ("api", "bridge"):
            continue  # generated protobuf and the Rust bridge's stubs
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id != "self":
                    continue
                name = node.attr
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = node.name
            else:
                continue
            if name.startswith("_") and not name.startswith("__"):
                names.add(name)
    return frozenset(names)


def private_sdk_attributes(root: Path, dirs: tuple[str, ...] = PRIVATE_SCAN) -> list[str]:
    """Reads of an SDK-private name on anything but self/cls, directly or through getattr."""
    private = sdk_private_names()
    found = []
    for path in _files(root, dirs, TOP_MODULES):
        rel = path.relative_to(root)
        for node in ast.walk(_parsed(path)):
            name: str | None = None
            if isinstance(node, ast.Attribute) and node.attr in private:
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    name = node.attr
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr", "setattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in private
            ):
                name = str(node.args[1].value)
            if name is not None:
                found.append(f"{rel}:{node.lineno} reads {name}")
    return found


def no_test_module_imports_another(root: Path) -> list[str]:
    """Helpers several test modules share live in tests/helpers/, never in a test module."""
    found = []
    for path in sorted((root / "tests").rglob("*.py")):
        tree = _parsed(path)
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith("test_"):
                    found.append(f"{path.relative_to(root)} imports {name}")
    return found


def db_functions_are_keyword_only(root: Path) -> list[str]:
    """Every public db/ function takes its arguments by name: `get_deal(session=..., campaign_id=...)`."""
    found = []
    for path in sorted((root / "db").glob("*.py")):
        for node in _parsed(path).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                positional = [a.arg for a in node.args.posonlyargs + node.args.args]
                if positional:
                    found.append(f"db/{path.name}:{node.lineno} {node.name}({', '.join(positional)})")
    return found


RULES = [
    db_functions_are_keyword_only,
    no_test_module_imports_another,
    activities_import_no_workflow,
    workflow_modules_are_sandbox_safe,
    starters_import_no_workflow,
    worker_imports_no_cli,
    domain_imports_no_other_folder,
    telemetry_imports_no_project_module,
    import_cycles,
    private_sdk_attributes,
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_the_house_keeps_its_rules(rule: object) -> None:
    """The repository as it is breaks none of the rules."""
    assert callable(rule)
    assert rule(ROOT) == []


def test_the_graph_sees_the_project() -> None:
    """The graph holds the modules the rules are about (a rule over an empty graph proves nothing)."""
    graph = import_graph(ROOT)
    for module in ("activities.imports", "workflows.deals", STARTERS, "api.io", "cli", "worker"):
        assert module in graph
    assert "activities.deals" in graph["workflows.deals"]
    assert STARTERS in graph["activities.imports"]


def _workflow_type(cls: type) -> str:
    """The type name a workflow class registers: its @workflow.defn's `name=`, else the class's name."""
    (node,) = ast.parse(textwrap.dedent(inspect.getsource(cls))).body
    assert isinstance(node, ast.ClassDef)
    for deco in node.decorator_list:
        if isinstance(deco, ast.Call) and ast.unparse(deco.func) == "workflow.defn":
            for kw in deco.keywords:
                if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                    return str(kw.value.value)
    return cls.__name__


def test_starters_name_what_the_workflows_define() -> None:
    """The type, signal and query names the starters send by name are the classes' own."""
    from workflows import starters
    from workflows.deals import DealWorkflow
    from workflows.imports import ImportWorkflow
    from workflows.io import IoBookingWorkflow
    from workflows.maintenance import MaintenanceWorkflow
    from workflows.matching import MatchRecalculationWorkflow

    assert starters.DEAL_WORKFLOW == _workflow_type(DealWorkflow)
    assert starters.IO_WORKFLOW == _workflow_type(IoBookingWorkflow)
    # The class imports XLSX too; its type keeps the name recorded histories carry.
    assert starters.IMPORT_WORKFLOW == _workflow_type(ImportWorkflow) == "CsvImportWorkflow"
    assert starters.MATCH_WORKFLOW == _workflow_type(MatchRecalculationWorkflow)
    assert starters.MAINTENANCE_WORKFLOW == _workflow_type(MaintenanceWorkflow)
    for cls, name in (
        (DealWorkflow, starters.DEAL_RESYNC_SIGNAL),
        (IoBookingWorkflow, starters.IO_DELIVERY_REPORTED_SIGNAL),
        (IoBookingWorkflow, starters.IO_SNAPSHOT_QUERY),
        (MatchRecalculationWorkflow, starters.MATCH_ROWS_CHANGED_SIGNAL),
    ):
        assert callable(getattr(cls, name, None)), f"{cls.__name__} has no handler {name}"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in {**{f"{p}/__init__.py": "" for p in PACKAGES}, **files}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_each_rule_catches_what_it_forbids(tmp_path: Path) -> None:
    """A small tree with one breach of each rule (the ones main had before) is caught by each."""
    root = _tree(
        tmp_path,
        {
            # workflows import activities (fine), activities import workflows back (a cycle).
            "workflows/deals.py": "from activities.deals import DealActivities\n",
            "activities/deals.py": "def f():\n    from workflows.deals import deal_workflow_id\n",
            # client code in a workflow module, even under imports_passed_through.
            "workflows/matching.py": (
                "from temporalio import workflow\n"
                "with workflow.unsafe.imports_passed_through():\n"
                "    from temporalio.client import Client\n"
            ),
            "workflows/starters.py": "from workflows.deals import DealWorkflow\n",
            "worker.py": "if __name__ == '__main__':\n    from cli import exit_skipping_teardown\n",
            "cli.py": "import worker\n",
            "domain/deals.py": "from db.models import Campaign\n",
            # settings only for the type checker is fine; a runtime import of api/ is not.
            "telemetry.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from settings import Settings\n"
                "from api.deals import start\n"
            ),
            "db/models.py": "Campaign = object\n",
            "db/deals.py": "def get_deal(session, *, campaign_id):\n    pass\ndef _row(session):\n    pass\n",
            "tests/integration/test_a.py": "def upload():\n    pass\n",
            "tests/integration/test_b.py": (
                "from tests.integration.test_a import upload\nfrom tests.helpers.imports import FINAL\n"
            ),
            "api/deals.py": (
                "async def start(handle):\n"
                "    return getattr(getattr(handle, '_start_workflow_response', None), 'started', True)\n"
                "def first(handle):\n"
                "    return handle._first_execution_run_id\n"
            ),
        },
    )
    assert no_test_module_imports_another(root) == [
        "tests/integration/test_b.py imports tests.integration.test_a"
    ]
    assert db_functions_are_keyword_only(root) == ["db/deals.py:1 get_deal(session)"]
    assert activities_import_no_workflow(root) == ["activities.deals imports workflows.deals"]
    assert workflow_modules_are_sandbox_safe(root) == ["workflows.matching imports temporalio.client"]
    assert starters_import_no_workflow(root) == ["workflows.starters imports workflows.deals"]
    assert worker_imports_no_cli(root) == ["worker imports cli"]
    assert domain_imports_no_other_folder(root) == ["domain.deals imports db.models"]
    assert telemetry_imports_no_project_module(root) == ["telemetry imports api.deals"]
    assert import_cycles(root) == ["activities.deals <-> workflows.deals", "cli <-> worker"]
    assert sorted(private_sdk_attributes(root, ("api",))) == [
        "api/deals.py:2 reads _start_workflow_response",
        "api/deals.py:4 reads _first_execution_run_id",
    ]


def test_type_checking_imports_make_no_cycle(tmp_path: Path) -> None:
    """An import only the type checker runs is no cycle (it never executes)."""
    root = _tree(
        tmp_path,
        {
            "workflows/deals.py": "from activities.deals import DealActivities\n",
            "activities/deals.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from workflows.deals import DealWorkflow\n"
            ),
        },
    )
    assert import_cycles(root) == []
