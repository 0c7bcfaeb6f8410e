"""The configuration reference (docs/configuration.md), generated from conf/ so it cannot drift from it.

Every command's config and every option of every config group, with each setting's dotted name as it is typed
on the command line, its default as the file writes it, and the comments the file carries. The YAML is read twice:
`yaml.safe_load` for the structure and values, and a line scan for what a loader drops (comments, the `@package`
line, a value's spelling such as `1.0e-4`). Plain Python: no Hydra, nothing composed; the manual's build
(docs/hooks.py) calls `render_reference`, tests/test_docs.py checks it covers every file and key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# The line docs/configuration.md carries where the generated reference goes.
MARKER = "<!-- config-reference -->"

COMMANDS = ("train", "evaluate", "predict", "export", "summarize", "compare", "audit", "bench", "synth")

# What each config group is for: the one line of the reference not read from conf/ (tests/test_docs.py fails
# when a group has none, so a new group gets its line here).
GROUP_PURPOSES = {
    "bench_preset": "Sizes for `mura.bench`: `bench_preset=gpu` is the full-size GPU measurement.",
    "callbacks": "What runs beside training: checkpoints, early stopping, learning curves, Grad-CAM galleries, the "
                 "interruption checkpoint, timings, the cores' share.",
    "data": "Where the images come from, and how they are split, cached, loaded and augmented.",
    "debug": "Shrunken runs for debugging (`mura.train` only), applied after the experiment.",
    "experiment": "Recipes for `mura.train`: each picks data, model and trainer and sets only what differs.",
    "hparams_search": "Hyperparameter searches for `-m` sweeps.",
    "hydra": "Hydra's own settings, shared by every command: run and sweep folders, logging, the data-root guard.",
    "hydra/launcher": "Where a `-m` sweep's jobs run, besides Hydra's own `basic` (one after the other) and "
                      "`submitit_local` (local processes).",
    "logger": "Where metrics and run files go: CSV, TensorBoard, MLflow, Weights & Biases.",
    "model": "The network and its loss, optimiser, weight averaging and study pooling.",
    "model/scheduler": "The learning-rate schedule.",
    "paths": "Where caches, generated data and run folders go.",
    "trainer": "Lightning's Trainer: devices, precision, epochs, logging intervals.",
}

_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_$][\w$.\-]*|'[^']*'|\"[^\"]*\")\s*:(?:[ \t]+(?P<rest>.*))?$")
_PACKAGE_LINE = re.compile(r"^#\s*@package\s+(?P<package>\S+)")
# An inline comment that ends on one of these (or on a comma) goes on in the next key's inline comment when that
# one starts in lower case: files wrap one sentence over two keys' comments (`monitor: ... # one rule ... for
# best.ckpt, early stopping,` then `mode: ... # the sweeper's value and ...`).
_CONTINUING_WORDS = {"a", "an", "and", "are", "be", "by", "for", "in", "is", "of", "on", "or", "so",
                     "than", "that", "the", "this", "to", "which", "whose", "with"}


@dataclass
class Setting:
    """One row of the reference: `key` as typed on the command line, its default as written, its comment."""

    key: str
    value: str
    comment: str = ""


@dataclass
class ConfigFile:
    """One YAML file of conf/: a command's config (group None) or an option of a group."""

    path: str                 # relative to conf/, e.g. data/mura.yaml
    group: str | None         # data, model/scheduler, hydra/launcher, ...; None for a command's config
    option: str               # the file's stem: what `group=option` names
    package: str              # where its keys land: '' (global), data, model.scheduler, ...
    header: list[str]         # the file's leading comment lines
    defaults: list[str]       # its defaults list, as written
    settings: list[Setting] = field(default_factory=list)
    help: str | None = None   # hydra.help.template: what `--help` prints
    text: str = ""            # the file as written


@dataclass
class _Line:
    """What the line scan keeps of a key: its comments and its value's spelling. `comment_parts` is shared by the
    keys one wrapped sentence runs over."""

    raw_value: str | None = None
    comment_parts: list[str] = field(default_factory=list)
    lead: str = ""

    @property
    def comment(self) -> str:
        return " ".join(self.comment_parts)


def split_comment(text: str) -> tuple[str, str]:
    """`value  # comment` -> ('value', 'comment'): a `#` starts a comment at a line's start or after whitespace,
    outside quotes (YAML's rule)."""
    quote = None
    for position, character in enumerate(text):
        if quote:
            if character == quote:
                quote = None
        elif character in "'\"" and (position == 0 or text[position - 1] in " \t[{,:"):
            quote = character
        elif character == "#" and (position == 0 or text[position - 1] in " \t"):
            return text[:position].rstrip(), text[position + 1:].strip()
    return text.rstrip(), ""


def _unquote(key: str) -> str:
    return key[1:-1] if key[:1] in "'\"" else key


def _open_brackets(text: str) -> int:
    """How many `[` and `{` the text leaves open (outside quotes): a flow value that goes on on the next lines."""
    depth, quote = 0, None
    for character in text:
        if quote:
            quote = None if character == quote else quote
        elif character in "'\"":
            quote = character
        elif character in "[{":
            depth += 1
        elif character in "]}":
            depth -= 1
    return depth


def scan_lines(text: str) -> tuple[list[str], dict[tuple[str, ...], _Line]]:
    """The file's header comment lines, and for each mapping key (a path of keys) its inline comment (with the
    comment lines indented under it that go on with it), the comment block right above it, and its scalar value as
    written. List items (the defaults list) and block scalars (help templates) are passed over."""
    lines = text.splitlines()
    header: list[str] = []
    found: dict[tuple[str, ...], _Line] = {}
    stack: list[tuple[int, str]] = []      # (indent, key) of the mappings the current line is inside
    pending: list[str] = []                # full-line comments waiting for the key below them
    last: tuple[str, ...] | None = None    # the last key whose inline comment a deeper comment line continues
    last_column = 0
    skip_deeper_than: int | None = None    # inside a block scalar
    open_brackets = 0                      # inside a flow value spread over lines
    index = 0
    while index < len(lines) and lines[index].lstrip().startswith("#"):
        if not _PACKAGE_LINE.match(lines[index].strip()):
            header.append(lines[index].strip()[1:].removeprefix(" ").rstrip())
        index += 1
    for line in lines[index:]:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if skip_deeper_than is not None:
            if not stripped or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if open_brackets > 0:
            open_brackets += _open_brackets(split_comment(line)[0])
            continue
        if not stripped:
            pending, last = [], None
            continue
        if stripped.startswith("#"):
            comment = stripped[1:].strip()
            if last is not None and indent > last_column:
                found[last].comment_parts.append(comment)
            else:
                pending.append(comment)
                last = None
            continue
        match = _KEY_LINE.match(line)
        if stripped.startswith("- ") or match is None:
            pending, last = [], None
            value, _ = split_comment(stripped)
            open_brackets = _open_brackets(value)
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = _unquote(match["key"])
        path = (*(name for _, name in stack), key)
        stack.append((indent, key))
        value, comment = split_comment(match["rest"] or "")
        entry = found.setdefault(path, _Line())
        entry.lead = " ".join(pending)
        pending = []
        if comment:
            previous = found.get(last) if last is not None else None
            if previous is not None and previous.comment and _goes_on(previous.comment) and comment[:1].islower():
                entry.comment_parts = previous.comment_parts
            entry.comment_parts.append(comment)
            last, last_column = path, indent
        else:
            last = None
        if value.startswith(("|", ">")):
            skip_deeper_than = indent
        elif value:
            open_brackets = _open_brackets(value)
            if open_brackets <= 0:
                entry.raw_value = value
    return header, found


def _goes_on(comment: str) -> bool:
    last_word = comment.rstrip().rsplit(" ", 1)[-1].lower()
    return comment.rstrip().endswith(",") or last_word in _CONTINUING_WORDS


def format_value(value) -> str:
    """A loaded YAML value as YAML spells it on one line: null, true, [a, b], {k: v}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        return text.removesuffix("\n...").removesuffix("...").strip()
    return yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()


def _settings(node: dict, lines: dict[tuple[str, ...], _Line], prefix: str, path: tuple[str, ...] = ()) -> list[Setting]:
    rows = []
    for key, value in node.items():
        key = str(key)
        here = (*path, key)
        if here == ("defaults",) or here == ("hydra", "help", "template"):
            continue
        line = lines.get(here, _Line())
        comment = " ".join(part for part in (line.lead, line.comment) if part)
        dotted = ".".join(part for part in (prefix, *here) if part)
        if isinstance(value, dict) and value:
            if comment:
                rows.append(Setting(dotted, "", comment))
            rows.extend(_settings(value, lines, prefix, here))
        else:
            raw = line.raw_value if line.raw_value is not None and not isinstance(value, (dict, list)) else None
            rows.append(Setting(dotted, raw if raw is not None else format_value(value), comment))
    return rows


def _defaults_entry(entry) -> str:
    if isinstance(entry, dict):
        (key, value), = entry.items()
        return f"{key}: {format_value(value)}"
    return str(entry)


def read_config_file(conf_dir: Path, path: Path) -> ConfigFile:
    """One YAML file of conf/, read for the reference."""
    relative = path.relative_to(conf_dir)
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    group = "/".join(relative.parts[:-1]) or None
    package_line = next((match["package"] for line in text.splitlines() if (match := _PACKAGE_LINE.match(line.strip()))),
                        None)
    if package_line is None:
        package = group.replace("/", ".") if group else ""
    else:
        package = "" if package_line == "_global_" else package_line
    header, lines = scan_lines(text)
    help_text = (data.get("hydra") or {}).get("help", {}).get("template") if isinstance(data.get("hydra"), dict) else None
    return ConfigFile(
        path=relative.as_posix(),
        group=group,
        option=relative.stem,
        package=package,
        header=header,
        defaults=[_defaults_entry(entry) for entry in data.get("defaults", [])],
        settings=_settings(data, lines, package),
        help=help_text,
        text=text,
    )


def read_conf(conf_dir: Path) -> list[ConfigFile]:
    """Every YAML file of conf/, commands first (in COMMANDS order), then the groups' options by path."""
    files = [read_config_file(conf_dir, path) for path in sorted(conf_dir.rglob("*.yaml"))]
    order = {name: position for position, name in enumerate(COMMANDS)}
    return sorted(files, key=lambda config: (config.group is not None, order.get(config.option, len(order))
                                             if config.group is None else 0, config.path))


def _group_of(entry: str, config: ConfigFile) -> tuple[str, str] | None:
    """A defaults-list entry that chooses an option of a group -> (group, option), the option `null` for a group
    left empty (`experiment: null`); None for `_self_` and inheritance (`- mura`)."""
    if ":" not in entry:
        return None
    key, option = (part.strip() for part in entry.split(":", 1))
    key = key.removeprefix("override ").removeprefix("optional ").strip()
    if key == "_self_":
        return None
    if key.startswith("/"):
        return key[1:], option
    return (f"{config.group}/{key}" if config.group else key), option


def chosen_by(configs: list[ConfigFile]) -> dict[str, list[tuple[str, str]]]:
    """For each group, the files whose defaults list choose one of its options: group -> [(file, option)]."""
    choices: dict[str, list[tuple[str, str]]] = {}
    for config in configs:
        for entry in config.defaults:
            found = _group_of(entry, config)
            if found:
                choices.setdefault(found[0], []).append((config.path, found[1]))
    return choices


def escape_text(text: str) -> str:
    """A comment as Markdown text in a table cell: code spans kept, HTML-like and emphasis characters escaped."""
    parts = re.split(r"(`[^`]*`)", text)
    escaped = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            escaped.append(part)  # a table's cells do not end inside a code span
        else:
            escaped.append(part.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
                           .replace("*", "\\*").replace("_", "\\_").replace("`", "\\`"))
    return "".join(escaped)


def code(text: str) -> str:
    """Inline code (a table's cells do not end inside one), fenced by more backticks than it holds."""
    if not text:
        return ""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _paragraphs(lines: list[str]) -> list[str]:
    """Header comment lines as Markdown: prose joined into paragraphs, command lines (and the lines a `\\`
    continues them on) as fenced blocks."""
    blocks: list[str] = []
    prose: list[str] = []
    commands: list[str] = []

    def flush() -> None:
        if prose:
            blocks.append(escape_text(" ".join(prose)))
            prose.clear()
        if commands:
            blocks.append("```bash\n" + "\n".join(commands) + "\n```")
            commands.clear()

    for line in lines:
        stripped = line.strip()
        continued = bool(commands) and commands[-1].endswith("\\")
        if stripped.startswith(("python ", "python3 ")) or continued:
            if prose:
                flush()
            commands.append("    " + stripped if continued else stripped)
        else:
            if commands:
                flush()
            if line.strip():
                prose.append(line.strip())
            else:
                flush()
    flush()
    return blocks


def _settings_table(settings: list[Setting]) -> str:
    rows = ["| setting | default | comment |", "|---|---|---|"]
    rows += [f"| {code(setting.key)} | {code(setting.value)} | {escape_text(setting.comment)} |" for setting in settings]
    return "\n".join(rows)


def _file_block(config: ConfigFile) -> str:
    body = "\n".join("    " + line if line else "" for line in [f"```yaml title=\"conf/{config.path}\"",
                                                                   *config.text.rstrip().splitlines(), "```"])
    return f'??? note "The file as written: conf/{config.path}"\n\n{body}'


def _section(config: ConfigFile) -> list[str]:
    out = [*_paragraphs(config.header)]
    where = "at the top level (`# @package _global_`)" if config.group and not config.package else (
        f"under `{config.package}`" if config.group else "")
    facts = []
    if where:
        facts.append(f"Its settings land {where}.")
    if config.defaults:
        facts.append("Defaults list: " + ", ".join(code(entry) for entry in config.defaults) + ".")
    if facts:
        out.append(" ".join(facts))
    if config.settings:
        out.append(_settings_table(config.settings))
    else:
        out.append("No settings of its own.")
    if config.help:
        out.append(f"`--help` prints:\n\n```text\n{config.help.rstrip()}\n```")
    out.append(_file_block(config))
    return out


def render_reference(conf_dir: Path) -> str:
    """The configuration reference as Markdown: the commands' configs, then every group with its options."""
    conf_dir = Path(conf_dir)
    configs = read_conf(conf_dir)
    choices = chosen_by(configs)
    out: list[str] = ["## The commands' configs", ""]
    out.append("Each `python -m mura.<command>` composes `conf/<command>.yaml`: its defaults list picks one option "
               "of each group, then its own settings. `python -m mura.<command> --cfg job` prints the composed "
               "config.")
    for config in (config for config in configs if config.group is None):
        out += ["", f"### mura.{config.option}", "", *"\n\n".join(_section(config)).splitlines()]
    out += ["", "## Config groups", "",
            "Choose an option with `group=option` on the command line (`data=synthetic`, `model/scheduler=cosine`, "
            "`hydra/launcher=slurm`); an experiment chooses them with `override /group: option`."]
    groups = sorted({config.group for config in configs if config.group})
    for group in groups:
        options = [config for config in configs if config.group == group]
        out += ["", f"### {group}", ""]
        if group in GROUP_PURPOSES:
            out += [GROUP_PURPOSES[group], ""]
        out.append("Options: " + ", ".join(code(f"{group}={option.option}") for option in options) + ".")
        chosen = choices.get(group, [])
        if chosen:
            empty = ": none unless the command line chooses one"
            out += ["", "Chosen by: " + "; ".join(f"conf/{path} ({code(option)}{empty * (option == 'null')})"
                                                  for path, option in chosen) + "."]
        for option in options:
            out += ["", f"#### {group}={option.option}", "", *"\n\n".join(_section(option)).splitlines()]
    return "\n".join(out).rstrip() + "\n"
