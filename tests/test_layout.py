"""The package's layout tells its story: commands on top, each library module in the room of its job, and no
import from a lower layer to a higher one (../shared/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mura"
# Bottom to top; `app` (resolvers, paths, errors, the data-root guard) stands beside them all.
LAYERS = {"data": 0, "evaluation": 1, "models": 2, "inference": 3, "callbacks": 3, "benchmarking": 4, "commands": 5}
COMMANDS = {"train", "evaluate", "predict", "audit", "synth", "bench", "summarize", "export"}


def room(module: str) -> str:
    """`mura.data.index` -> data; `mura.train` -> commands; `mura.app.errors` -> app."""
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    if parts[1] in COMMANDS:
        return "commands"
    return parts[1]


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mura"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("mura"))
    return found


def test_the_top_level_holds_commands_only():
    top = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == COMMANDS


def test_no_import_runs_upward():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        module = "mura." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        source = room(module.removesuffix(".__init__"))
        for target in imports_of(path):
            destination = room(target)
            if "app" in (source, destination) or "package" in (source, destination):
                continue
            if LAYERS[destination] > LAYERS[source]:
                upward.append(f"{module} imports {target}")
    assert not upward, upward
