"""The import rules of DESIGN.md, read from the source (imports inside functions count):
no cycles, models and data stay below everything, the loop knows no task, data or family,
and only the registry names a family."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flaxft"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """flaxft modules `name` imports anywhere in its source (a package's re-exports too)."""
    path = MODULES[name]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith("flaxft") and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_no_import_cycles():
    """Strongly connected components of the import graph, ignoring a package's __init__
    re-exporting the modules inside it (which import each other directly)."""
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    real = [c for c in cycles if not all(_under(m, c[0]) for m in c)]
    assert not real, real


FORBIDDEN = {
    # module prefix: what it must never import
    "flaxft.models": ("flaxft.sharding", "flaxft.loop", "flaxft.data", "flaxft.tasks", "flaxft.checkpoint",
                      "flaxft.hf", "flaxft.train", "flaxft.pretrain", "flaxft.finetune"),
    "flaxft.data": ("flaxft.models", "flaxft.loop", "flaxft.tasks", "flaxft.hf", "flaxft.checkpoint",
                    "flaxft.sharding", "flaxft.train", "flaxft.pretrain", "flaxft.finetune"),
    "flaxft.loop": ("flaxft.tasks", "flaxft.data", "flaxft.models.bert", "flaxft.models.registry",
                    "flaxft.pretrain", "flaxft.finetune", "flaxft.train"),
    "flaxft.contracts": ("flaxft.tasks", "flaxft.data", "flaxft.models"),
    "flaxft.tasks": ("flaxft.loop", "flaxft.train", "flaxft.pretrain", "flaxft.finetune", "flaxft.sharding",
                     "flaxft.checkpoint"),
    # The sweep runs each run as `python -m flaxft.main` (flaxft/sweep.py says why): it builds nothing itself.
    "flaxft.sweep": ("flaxft.loop", "flaxft.train", "flaxft.pretrain", "flaxft.finetune", "flaxft.tasks",
                     "flaxft.models", "flaxft.checkpoint", "flaxft.sharding"),
    "flaxft.hf": ("flaxft.loop",),
    "flaxft.convert": ("flaxft.loop",),
}


@pytest.mark.parametrize("importer", sorted(FORBIDDEN))
def test_forbidden_imports(importer):
    bad = sorted(
        (name, target)
        for name, targets in GRAPH.items() if _under(name, importer)
        for target in targets if _under(target, *FORBIDDEN[importer])
    )
    assert not bad, bad


def test_nothing_imports_main_and_only_the_registry_names_a_family():
    assert not [name for name, targets in GRAPH.items() if "flaxft.main" in targets]
    family_packages = {name for name in MODULES if name.count(".") == 2 and name.startswith("flaxft.models.")
                       and MODULES[name].name == "__init__.py"}
    from flaxft.models import FAMILIES

    registered = {cls.__module__.rsplit(".", 1)[0] for f in FAMILIES.values() for cls in f.heads.values()}
    assert family_packages == registered  # every family package is registered, and nothing else is one
    naming = sorted(
        name for name, targets in GRAPH.items()
        for target in targets if _under(target, *family_packages) and not _under(name, *family_packages)
    )
    assert set(naming) == {"flaxft.models", "flaxft.models.registry"}, naming  # the public API re-exports BERT's classes


def test_the_loop_does_not_even_indirectly_import_a_task():
    import subprocess
    import sys

    code = "import sys, flaxft.loop; print(sorted(m for m in sys.modules if m.startswith('flaxft.tasks')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent)
    assert result.stdout.strip() == "[]", result.stdout


def test_config_choices_and_sharding_rules_cover_the_registries():
    from flaxft import config, sharding
    from flaxft.models import FAMILIES
    from flaxft.tasks import FINETUNE_TASKS

    assert config._CHOICES["task.name"] == ("pretraining", *FINETUNE_TASKS)
    for family in FAMILIES.values():  # a logical axis without a rule would stay whole on every device
        assert set(family.logical_axes) <= set(sharding.DEFAULT_RULES), family.name
