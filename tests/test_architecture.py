"""The package's shape: dependencies point one way, no import cycles, small modules.

The layers (DESIGN.md), lowest first; a module may import its own layer or a lower one:

    sde, ddpm, analytic, quantization, nets, datasets, metrics   (and the private helpers)
    samplers, likelihood, guidance
    losses, parameterization, interop, classifier
    checkpoint, training
    bench, demo, runs (what demo and cli share), image_likelihood, distributed
    cli
"""
import ast
from pathlib import Path

import pytest

import sdediff

PACKAGE = Path(sdediff.__file__).resolve().parent

LAYERS = [
    {"sde", "ddpm", "analytic", "quantization", "nets", "datasets", "digits", "metrics", "_checks", "_random",
     "_dopri5", "_mixture_conditional"},
    {"samplers", "likelihood", "guidance"},
    {"losses", "parameterization", "interop", "classifier"},
    {"checkpoint", "training", "_checkpoint_io", "_signals", "_trainer_checks", "_trainer_ddp",
     "_trainer_state"},
    {"bench", "demo", "runs", "conditional_runs", "image_likelihood", "distributed"},
    {"cli", "__main__"},
]
MAX_LINES = 460


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ["sdediff", *parts]


def _imports(path: Path, name: list[str]) -> set[str]:
    """Every sdediff module ``path`` imports (module level or inside functions)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "sdediff"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name if is_pkg else name[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "sdediff":
                continue
            out.add(target)
            for alias in node.names:  # `from . import x` may name a submodule
                out.add(f"{target}.{alias.name}")
    return out


def _runtime_nodes(tree):
    """Every node but those under ``if TYPE_CHECKING:`` (annotations only, never imported at run time)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _known(target: str, modules: set[str]) -> str | None:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def _graph():
    mods = {".".join(name): path for path, name in _modules()}
    graph = {}
    for mod, path in mods.items():
        deps = {_known(t, set(mods)) for t in _imports(path, mod.split("."))}
        graph[mod] = {d for d in deps if d and d != mod and d != "sdediff"}
    return graph


def test_every_module_has_a_layer():
    for mod in _graph():
        if mod != "sdediff":
            _layer(mod)


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} -> {d}" for m, deps in _graph().items() if m != "sdediff"
              for d in deps if _layer(d) > _layer(m)]
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ re-exporting its own submodules is not a cycle of ideas.
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in edges.get(m, ()):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("path", [p for p, _ in _modules()], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_are_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (> {MAX_LINES}): split it by job"


def test_the_import_graph_sees_imports(tmp_path):
    """The checker itself: relative, absolute and function-level imports are all found."""
    src = tmp_path / "m.py"
    src.write_text("from ..sde import VPSDE\nimport sdediff.samplers\n"
                   "def f():\n    from ..likelihood import log_likelihood\n")
    found = _imports(src, ["sdediff", "bench", "m"])
    assert {"sdediff.sde", "sdediff.samplers", "sdediff.likelihood"} <= {f for f in found if f.count(".") <= 1}
