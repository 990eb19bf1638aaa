"""The import rules of DESIGN §1, checked by parsing every module of ``fedpriv/`` with ``ast``.

- ``fedpriv/`` never imports ``hydra`` or ``omegaconf`` (only ``experiments/`` does);
- ``fedpriv/attacks/`` never imports ``fedpriv.data`` or ``fedpriv.metrics``;
- no module but ``fedpriv/scenario.py`` imports ``fedpriv.scenario``;
- the import graph between the top-level parts of ``fedpriv`` has no cycle;
- no ``print(`` in the library (it logs), and nothing there mentions torch.

Every import counts, wherever it sits (module level, inside a function, under
``TYPE_CHECKING``): a rule about what a layer may know holds for all of them. The checker
itself is tested on small made-up sources first, so a rule that stopped seeing imports
would fail here instead of passing silently.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = "fedpriv"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE
FORBIDDEN_FRAMEWORKS = ("hydra", "omegaconf")
# The top-level parts: subpackages (data, attacks, ...) and modules (scenario, keys, typing, ...).
PARTS = frozenset(path.stem for path in PACKAGE_DIR.iterdir()
                  if (path.is_dir() and (path / "__init__.py").exists())
                  or (path.suffix == ".py" and path.stem != "__init__"))
ATTACKS_MAY_NOT_SEE = ("fedpriv.data", "fedpriv.metrics")


def module_name(path: Path, root: Path = PACKAGE_DIR) -> str:
    """``fedpriv/attacks/labels.py`` -> ``fedpriv.attacks.labels``; ``__init__`` names its package."""
    parts = (root.name, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_modules(source: str, name: str, package: bool) -> set[str]:
    """Absolute names of every module ``source`` (module ``name``) imports.

    ``from a.b import c`` yields ``a.b`` and ``a.b.c`` (``c`` may be a submodule:
    ``from fedpriv import data``); relative imports are resolved against ``name``.
    """
    found: set[str] = set()
    # The package a relative import starts from: the module's own package.
    anchor = name.split(".") if package else name.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(anchor) - 1:
                    raise ValueError(f"{name}: relative import beyond the top-level package")
                base = anchor[: len(anchor) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def top_level_part(module: str) -> str | None:
    """``fedpriv.attacks.labels`` -> ``attacks``; ``fedpriv`` itself -> ``None``."""
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` if it is acyclic."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def part_graph(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges ``A -> B`` between top-level parts of the package when a module of ``A`` imports ``B``."""
    graph: dict[str, set[str]] = {}
    for importer, targets in imports.items():
        source = top_level_part(importer)
        if source is None:  # fedpriv/__init__.py re-exports; it is no layer of its own
            continue
        graph.setdefault(source, set())
        for target in targets:
            part = top_level_part(target) if within(target, PACKAGE) else None
            # ``from fedpriv import data`` names ``fedpriv.data``; a bare ``fedpriv`` names no part.
            if part is not None and part != source and part in PARTS:
                graph[source].add(part)
    return graph


def print_calls(source: str) -> list[int]:
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]


TORCH = re.compile(r"\btorch\b", re.IGNORECASE)


def mentions_torch(source: str) -> list[int]:
    """Lines naming the module ``torch`` (as a word: ``torchvision``/``PyTorch`` prose is no import)."""
    lines = [number for number, line in enumerate(source.splitlines(), 1) if TORCH.search(line)]
    imports = [node.lineno for node in ast.walk(ast.parse(source))
               if isinstance(node, (ast.Import, ast.ImportFrom))
               and any(within(name, "torch") for name in imported_modules_of(node))]
    return sorted(set(lines) | set(imports))


def imported_modules_of(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return [node.module or ""]


# -- the library's modules, parsed once ----------------------------------------------------

SOURCES = {path: path.read_text() for path in sorted(PACKAGE_DIR.rglob("*.py"))}
IMPORTS = {module_name(path): imported_modules(text, module_name(path), is_package(path))
           for path, text in SOURCES.items()}


def relative(path: Path) -> str:
    return str(path.relative_to(PACKAGE_DIR.parent))


# -- the checker, on made-up sources ----------------------------------------------------------

def test_checker_resolves_absolute_relative_and_from_package_imports():
    source = "\n".join([
        "import numpy as np",
        "from fedpriv import data",
        "from ..metrics import psnr",
        "from . import labels",
        "from .common import thing",
        "def lazy():",
        "    import omegaconf",
        "if False:",
        "    from fedpriv.scenario import run_scenario",
    ])
    found = imported_modules(source, "fedpriv.attacks.inverting_gradients", package=False)
    assert {"numpy", "fedpriv", "fedpriv.data", "fedpriv.metrics", "fedpriv.metrics.psnr", "fedpriv.attacks",
            "fedpriv.attacks.labels", "fedpriv.attacks.common", "omegaconf",
            "fedpriv.scenario"} <= found
    # In a package's __init__, "." is the package itself.
    assert "fedpriv.attacks.common" in imported_modules("from .common import x", "fedpriv.attacks", package=True)
    assert "fedpriv.data" in imported_modules("from .. import data", "fedpriv.attacks", package=True)


def test_checker_finds_cycles_and_prints_and_torch():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    graph = part_graph({"fedpriv.models.mlp": {"fedpriv.typing"}, "fedpriv.typing": {"fedpriv.models"},
                        "fedpriv": {"fedpriv.models"}})
    assert graph == {"models": {"typing"}, "typing": {"models"}}
    assert find_cycle(graph) in (["models", "typing", "models"], ["typing", "models", "typing"])
    assert print_calls("x = 1\nprint(x)\nlogger.info('print(x)')\n") == [2]
    assert mentions_torch("import torch.nn as nn\n") == [1]
    assert mentions_torch("from torch import nn\n") == [1]
    assert mentions_torch("# like torchvision's ImageFolder, or PyTorch's norms\n") == []


# -- the rules on the real package -------------------------------------------------------------

def test_the_package_has_the_modules_the_rules_talk_about():
    # A moved package must not make the rules below vacuous.
    modules = set(IMPORTS)
    assert len(SOURCES) >= 30
    for required in ("fedpriv.scenario", "fedpriv.attacks", "fedpriv.data", "fedpriv.metrics",
                     "fedpriv.federated", "fedpriv.models"):
        assert required in modules
    assert any(within(target, "fedpriv.data") for target in IMPORTS["fedpriv.scenario"])


def test_library_never_imports_hydra_or_omegaconf():
    offenders = sorted(f"{module} imports {target}" for module, targets in IMPORTS.items() for target in targets
                       for framework in FORBIDDEN_FRAMEWORKS if within(target, framework))
    assert offenders == [], "fedpriv/ must not import hydra/omegaconf (only experiments/ does):\n" + "\n".join(offenders)


def test_attacks_see_neither_private_data_nor_metrics():
    attack_modules = [module for module in IMPORTS if within(module, "fedpriv.attacks")]
    assert len(attack_modules) >= 3
    offenders = sorted(f"{module} imports {target}" for module in attack_modules for target in IMPORTS[module]
                       for hidden in ATTACKS_MAY_NOT_SEE if within(target, hidden))
    assert offenders == [], "attacks may only see an Observation and public knowledge:\n" + "\n".join(offenders)


def test_only_scenario_imports_scenario():
    offenders = sorted(f"{module} imports {target}" for module, targets in IMPORTS.items()
                       if module != "fedpriv.scenario" for target in targets if within(target, "fedpriv.scenario"))
    assert offenders == [], "lower layers never import fedpriv.scenario:\n" + "\n".join(offenders)


def test_no_cycles_between_top_level_parts():
    graph = part_graph(IMPORTS)
    assert {"attacks", "data", "federated", "models", "scenario"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle between fedpriv's parts: {' -> '.join(cycle)}"


def test_no_print_in_the_library():
    offenders = [f"{relative(path)}:{line}" for path, text in SOURCES.items() for line in print_calls(text)]
    assert offenders == [], "use logging, not print, in fedpriv/:\n" + "\n".join(offenders)


def test_no_torch_in_the_library():
    offenders = [f"{relative(path)}:{line}" for path, text in SOURCES.items() for line in mentions_torch(text)]
    assert offenders == [], "fedpriv/ is JAX only; torch is mentioned at:\n" + "\n".join(offenders)
