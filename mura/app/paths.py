"""Command-line path arguments that may be glob patterns (a sweep's `*/checkpoints/best.ckpt`, its `*` jobs)."""

from __future__ import annotations

import glob
from collections.abc import Callable

from omegaconf import ListConfig

from mura.app.errors import ConfigError


def expand_paths(value, setting: str, keep: Callable[[str], bool] | None = None) -> list[str]:
    """A path, a list of paths, or quoted glob patterns (each standing for its matches in sorted order, those that
    `keep` accepts when given: a sweep's `*` also matches Hydra's multirun.yaml), in order. A pattern that matches
    nothing is an error naming `setting`: a silent empty match would drop runs unnoticed."""
    entries = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    if not entries:
        raise ConfigError(f"{setting} is empty: pass a path, a list [a,b] or a quoted glob pattern")
    paths = []
    for entry in map(str, entries):
        if not any(character in entry for character in "*?["):
            paths.append(entry)
            continue
        matches = [match for match in sorted(glob.glob(entry)) if keep is None or keep(match)]
        if not matches:
            raise ConfigError(f"{setting} pattern {entry!r} matches nothing; check the folder (a multirun's jobs are "
                              "MULTIRUN_DIR/0, MULTIRUN_DIR/1, ...)")
        paths.extend(matches)
    return paths
