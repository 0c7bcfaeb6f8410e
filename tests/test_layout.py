"""The package's layout tells its story: commands on top, each library module in the room of its job, and no
import from a lower layer to a higher one (../shared/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mura"
# Bottom to top; `app` (resolvers, paths, errors, the data-root guard) stands beside them all.
LAYERS = {"data": 0, "evaluation": 1, "models": 2, "inference": 3, "callbacks": 3, "benchmarking": 4, "commands": 5}
COMMANDS = {"train", "evaluate", "predict", "audit", "synth", "bench", "summarize", "export", "compare"}


def room(module: str) -> str:
    """`mura.data.index` -> data; `mura.train` -> commands; `mura.app.errors` -> app."""
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    if parts[1] in COMMANDS:
        return "commands"
    return parts[1]


def module_name(path: Path) -> str:
    """mura/data/index.py -> mura.data.index; mura/data/__init__.py -> mura.data."""
    return ".".join(("mura", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def imports_of(path: Path, source: str | None = None) -> set[str]:
    """The mura modules `path` imports (`source`: its text, if not the file's), relative imports resolved;
    `from mura import train` imports mura.train."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            if base == "mura":
                found |= {f"mura.{alias.name}" for alias in node.names
                          if (PACKAGE / alias.name).is_dir() or (PACKAGE / f"{alias.name}.py").is_file()}
            elif base and base.startswith("mura."):
                found.add(base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("mura."))
    return found


def test_imports_are_found_however_they_are_spelled():
    """Relative imports and `from mura import x` count: an upward import must not slip past by its spelling."""
    lines = "from ..models import loss\nfrom .index import BODY_PARTS\nfrom mura import train, app\nimport mura.evaluation.metrics\n"
    assert imports_of(PACKAGE / "data" / "split.py", lines) == {"mura.models", "mura.data.index", "mura.train", "mura.app",
                                                                "mura.evaluation.metrics"}
    assert imports_of(PACKAGE / "data" / "__init__.py", "from .split import x\n") == {"mura.data.split"}


def test_the_top_level_holds_commands_only():
    top = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == COMMANDS


def test_no_import_runs_upward():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        source = room(module)
        for target in imports_of(path):
            destination = room(target)
            if "app" in (source, destination) or "package" in (source, destination):
                continue
            if LAYERS[destination] > LAYERS[source]:
                upward.append(f"{module} imports {target}")
    assert not upward, upward
