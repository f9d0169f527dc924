"""The package's import graph: no cycle, and the pipeline stages import one way (read from the source with ast)."""

import ast
from pathlib import Path

import slmkit

PACKAGE = Path(slmkit.__file__).parent

# Each module imports only from its own stage's package or from earlier stages. A name covers a
# module or a whole package (tokenizer, data), whose modules may import one another.
# The tokenizer kinds and the data sources come before config, which validates tokenizer.kind
# against the kinds they declare (and names runs after their sources); they name config's
# dataclasses only in type hints (`if TYPE_CHECKING:`, not imported at run time).
# Train sits after evaluate/generate/plot (it evaluates, samples and draws loss.png while it
# trains) and after runs (it writes checkpoints into the run folder); quantize before runs
# (a model transform; runs saves and loads its int8 files).
STAGES = [
    {"errors"},
    {"atomic"},
    {"sampling"},  # SamplingParams: the recipe's sample section (config) gives one
    {"chat"},  # the chat template and records (no torch): the tokenizer adds its markers
    {"tokenizer"},
    {"runfiles"},  # the names of the run folder's files (no torch): runs, runtable and plot import them
    {"progress"},  # the progress bars every stage draws
    {"data.sources"},
    {"config"},
    {"data"},  # prepare, shards, sampler
    {"model"},
    {"quantize"},
    {"runs"},
    {"runtable"},  # reads run folders (the table of `slm runs`, the points `slm plot` draws)
    {"optim", "evaluate", "generate", "plot"},
    {"train"},
    {"finetune", "session"},
    {"sweep"},  # trains runs
    {"export", "serve", "recipes"},
    {"export_gguf", "export_onnx"},  # GGUF reuses export's tensor mapping and architecture check
    {"cli"},
    {"__main__", "slmkit"},  # slmkit: the package's __init__, the public API
]


def module_name(path: Path) -> str:
    parts = ("slmkit",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def run_time_nodes(tree: ast.AST):
    """Every node of `tree` but those under `if TYPE_CHECKING:` (imports for type hints only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *run_time_nodes(child)])
            continue
        yield node
        yield from run_time_nodes(node)


def imported(name: str, path: Path) -> set[str]:
    """slmkit modules that `name` imports at run time anywhere in its file (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in run_time_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES}
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    # a module's own parent packages are already being imported when it runs: not an edge
    return {m for m in found if m in MODULES and m != name and m not in ancestors}


GRAPH = {name: imported(name, path) for name, path in MODULES.items()}


def stage_of(name: str) -> tuple[int, str]:
    """The stage of a module and the stage entry (module or package) it belongs to."""
    short = name.removeprefix("slmkit.") if name != "slmkit" else "slmkit"
    for i, stage in enumerate(STAGES):
        for entry in stage:
            if short == entry or short.startswith(entry + "."):
                return i, entry
    raise AssertionError(f"{name} is in no stage of tests/test_imports.py: add it to STAGES")


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph` as a path [a, b, ..., a], or [] if there is none."""
    state: dict[str, str] = {}  # visiting | done
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "visiting"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "visiting":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_parser_sees_relative_absolute_and_lazy_imports():
    assert "slmkit.runs" in GRAPH["slmkit.cli"]  # `from .runs import ...` inside a function
    assert "slmkit.tokenizer.base" in GRAPH["slmkit.tokenizer.char"]  # `from .base import Tokenizer`
    assert "slmkit.tokenizer" in GRAPH["slmkit.data.prepare"]  # `from ..tokenizer import ...`
    assert "slmkit.config" not in GRAPH["slmkit.tokenizer"]  # only under `if TYPE_CHECKING:`
    assert "slmkit.data.sources" in GRAPH["slmkit.recipes"]  # `from .data import sources`


def test_find_cycle_finds_a_lazy_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_stages_import_one_way():
    backwards = []
    for name, targets in sorted(GRAPH.items()):
        stage, entry = stage_of(name)
        for target in sorted(targets):
            target_stage, target_entry = stage_of(target)
            if target_stage > stage or (target_stage == stage and target_entry != entry):
                backwards.append(f"{name} imports {target} (stage {sorted(STAGES[target_stage])} is not before {sorted(STAGES[stage])})")
    assert not backwards, "\n".join(backwards)


def test_quantize_is_a_pure_model_transform():
    assert GRAPH["slmkit.quantize"] <= {"slmkit.config", "slmkit.model"}
