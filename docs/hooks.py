"""mkdocs hooks for the manual (mkdocs.yml `hooks:`).

- The configuration reference is generated from conf/ on every build (mura/app/config_reference.py), in place of
  the marker line in configuration.md: nothing committed can go stale.
- README.md and CHANGELOG.md are included by pymdownx.snippets from the repository's root, whatever folder mkdocs
  is started from.
"""

from __future__ import annotations

from pathlib import Path

from mura.app.config_reference import MARKER, render_reference

ROOT = Path(__file__).resolve().parents[1]


def on_config(config):
    snippets = config.mdx_configs.get("pymdownx.snippets")
    if snippets is not None:
        snippets["base_path"] = [str(ROOT)]
    return config


def on_page_markdown(markdown, page, config, files):
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render_reference(ROOT / "conf"))
