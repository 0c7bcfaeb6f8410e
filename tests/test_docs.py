"""The manual cannot rot: every `python -m mura.<command> ...` in README.md and docs/ composes with the real
conf/ (a renamed setting or group fails here), every `make <target>` they name exists, and the configuration
reference is generated from conf/ at build time (docs/hooks.py), so it covers every file and key there is.

Composition only: nothing is trained, nothing is resolved (`${...}` interpolations need a run), so it takes
seconds. Which lines count and how each kind is read:

- a command is `python -m mura.<command>` (or `python3`, `.venv/bin/python`) inside a fenced code block (a
  `\\` continuation joins the next line) or an inline code span (which may wrap over lines of a paragraph);
  everything else (prose, `pip`, `make`, `mlflow ui`, `python -m pytest`, `python -X importtime ...`) is not a
  mura command and is not composed;
- the shell's rules: quotes, a `#` comment, and the end of the command at a pipe or redirection (`| jq`);
- placeholders: `<run>` or `<day>_<time>` inside an argument become words (`run`, `day_time`), an argument that is
  a placeholder as a whole (`<same overrides>`, `...`, `...small overrides...`) stands for more arguments and is
  dropped, `[...five best.ckpt...]` becomes a one-element list, `$R`, `$MURA` and other shell variables become a
  fixture path (a variable assigned earlier in the same code block takes its value), and `mura.<command>` is
  every command;
- Hydra's flags: `-m`/`--multirun` (a sweep: each comma sweep such as `data.cv_fold=0,1,2,3,4` is composed with
  its first value), `--help`, `--hydra-help`, `--cfg job`, `--resolve`, `--info` (the config they describe is
  composed with the overrides given); any other flag is an error;
- `hydra.*` overrides and `hydra/...` groups are kept and composed with `return_hydra_config=True`: Hydra
  composes its own node either way, and keeping it checks that `hydra/launcher=slurm hydra.launcher.partition=gpu`
  or `hydra.sweep.dir=...` name settings that exist (dropping them would let a renamed launcher setting pass).

Composing is Hydra's two steps, as `compose` does them: the defaults list with the group choices
(`experiment=wrist`, `model/scheduler=cosine`, `hydra/launcher=slurm`), by `compose` itself, then every other
override applied to that config by Hydra's own `ConfigLoaderImpl._apply_overrides_to_config`. The first step is
the slow one (about 0.1 s), and the pages hold a hundred commands but only some thirty choices of groups: each
choice is composed once and copied for every command that makes it. `test_two_steps_equal_compose` holds the two
steps to `compose` with every override at once.

A line that cannot be read this way fails with its file and line number; it is never skipped.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import CONF_DIR, REPO
from mura.app.config_reference import COMMANDS, GROUP_PURPOSES, MARKER, read_conf, render_reference

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]

# Shell variables the pages use, as fixtures; a variable assigned earlier in the same code block takes its value.
SHELL_VARIABLES = {
    "MURA": "/data/MURA-v1.1",
    "MURA_ROOT": "/data/MURA-v1.1",
    "MURA_REAL_ROOT": "/data/MURA-v1.1",
    "R": "/data/MURA-v1.1",
    "PWD": "/home/me/mura",
    "HOME": "/home/me",
    "OUT": "/tmp/out",
}
# Hydra's command-line flags that leave the composed config alone: those that take a value, those that may
# (--info, when a value of INFO_TOPICS follows), and those that do not. Others (--config-name, ...) are errors.
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p"}
FLAGS_WITH_OPTIONAL_VALUE = {"--info", "-i"}
INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
FLAGS = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--resolve", "--version"}

_COMMAND_START = re.compile(r"(?<![\w/.-])(?:[\w./-]*/)?python3?\s+-m\s+mura\.")
_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_]\w*)=(\S+)")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
_MAKE = re.compile(r"(?<![\w$(.-])make\s+([A-Za-z][\w-]*)")


class UnreadableCommand(ValueError):
    """A documented command this test cannot turn into a composition: the page must say it another way."""


@dataclass
class DocumentedCommand:
    page: Path
    line: int
    text: str                     # as the page writes it (continuations joined)
    variables: dict[str, str]     # shell variables assigned earlier in its code block

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


@dataclass
class Composition:
    config_name: str
    overrides: list[str]


def code_spans(text: str) -> list[tuple[int, str, dict[str, str]]]:
    """Each command-bearing piece of code in a Markdown page: (line number, code, shell variables assigned before
    it in its block). A fenced block gives one piece per logical line (`\\` continuations joined); outside fences,
    each inline code span (a span may wrap over the lines of one paragraph) is one piece."""
    lines = text.splitlines()
    pieces: list[tuple[int, str, dict[str, str]]] = []
    prose: list[str] = []
    fence: str | None = None
    variables: dict[str, str] = {}
    pending: list[str] = []
    pending_line = 0
    for number, line in enumerate(lines, start=1):
        opened = _FENCE.match(line)
        if fence is None:
            if opened:
                fence, variables = opened["fence"], {}
                prose.append("")
            else:
                prose.append(line)
            continue
        prose.append("")
        if opened and opened["fence"].startswith(fence) and not line.strip()[len(opened["fence"]):].strip():
            fence = None
            continue
        if not pending:
            pending_line = number
        stripped = line.strip()
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].rstrip())
            continue
        pending.append(stripped)
        logical = " ".join(pending)
        pending = []
        pieces.append((pending_line, logical, dict(variables)))
        assigned = _ASSIGNMENT.match(logical)
        if assigned and not _COMMAND_START.search(logical):
            variables[assigned[1]] = assigned[2]
    # Inline code, paragraph by paragraph (a span never crosses a blank line, so a stray backtick spoils one
    # paragraph at most).
    paragraph_start = 0
    for number, line in enumerate([*prose, ""]):
        if line.strip():
            continue
        paragraph = "\n".join(prose[paragraph_start:number])
        for match in _INLINE_CODE.finditer(paragraph):
            line_number = paragraph_start + paragraph.count("\n", 0, match.start()) + 1
            pieces.append((line_number, " ".join(match[2].split()), {}))
        paragraph_start = number + 1
    return sorted(pieces, key=lambda piece: piece[0])


def documented_commands(page: Path) -> list[DocumentedCommand]:
    """The `python -m mura.<command> ...` commands of a page, each from its start to the end of its code."""
    found = []
    for line, code, variables in code_spans(page.read_text()):
        for start in _COMMAND_START.finditer(code):
            found.append(DocumentedCommand(page, line, code[start.start():], variables))
    return found


def strip_comment(text: str) -> str:
    """The shell's comment rule: `#` at the start of a word, outside quotes, ends the command (a `#` inside a
    word is part of it, and an apostrophe in the comment is no quote)."""
    quote = None
    for position, character in enumerate(text):
        if quote:
            if character == quote:
                quote = None
        elif character in "'\"":
            quote = character
        elif character == "#" and (position == 0 or text[position - 1].isspace()):
            return text[:position]
    return text


def _placeholder_word(match: re.Match) -> str:
    return re.sub(r"\W+", "_", match[1]).strip("_") or "placeholder"


def replace_placeholders(text: str, variables: dict[str, str], where: str) -> str:
    """The pages' placeholders as values a composition takes (see the module's docstring)."""
    # Whole-argument placeholders stand for more arguments: `<same overrides>`, `...small overrides...`, `...`.
    text = re.sub(r"(?<!\S)<[^<>]*>(?!\S)", " ", text)
    text = re.sub(r"(?<!\S)\.\.\.(?:[^\s=]*?(?:\s+[^\s=]+?)*?\.\.\.)?(?!\S)", " ", text)
    # An ellipsis phrase as a list element: ckpt_path=[...five best.ckpt...] -> [placeholder]
    text = re.sub(r"(?<=[\[,])\.\.\.[^\]]*?\.\.\.(?=[\],])", "placeholder", text)
    text = re.sub(r"<([^<>]+)>", _placeholder_word, text)

    def variable(match: re.Match) -> str:
        name = match[1] or match[2]
        if name in variables:
            return variables[name]
        if name in SHELL_VARIABLES:
            return SHELL_VARIABLES[name]
        raise UnreadableCommand(f"{where}: unknown shell variable ${name}: add it to SHELL_VARIABLES in "
                                "tests/test_docs.py or assign it in the code block")

    return re.sub(r"\$\{(\w+)\}|\$([A-Za-z_]\w*)", variable, text)


def compositions(command: DocumentedCommand) -> list[Composition]:
    """What a documented command composes: its config name and its overrides (each sweep reduced to its first
    value). Raises UnreadableCommand, naming the page and line, for anything it cannot read."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    where = command.where
    text = replace_placeholders(strip_comment(command.text), {**SHELL_VARIABLES, **command.variables}, where)
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars="|;&<>")
        lexer.whitespace_split = True
        lexer.commenters = ""
        tokens = list(lexer)
    except ValueError as error:
        raise UnreadableCommand(f"{where}: cannot split {command.text!r}: {error}") from error
    if len(tokens) < 3 or tokens[1] != "-m" or not tokens[2].startswith("mura."):
        raise UnreadableCommand(f"{where}: not a `python -m mura.<command>` line: {command.text!r}")
    module = tokens[2].removeprefix("mura.")
    names = list(COMMANDS) if module == "command" else [module]  # `mura.<command>`: any of them
    if any(name not in COMMANDS for name in names):
        raise UnreadableCommand(f"{where}: mura.{module} is no command (commands: {', '.join(COMMANDS)})")
    arguments, skip_next, optional_value = [], False, False
    for token in tokens[3:]:
        if set(token) <= set("|;&<>"):
            break
        if skip_next or (optional_value and token in INFO_TOPICS):
            skip_next = optional_value = False
            continue
        optional_value = False
        if token in FLAGS:
            continue
        if token in FLAGS_WITH_VALUE or token in FLAGS_WITH_OPTIONAL_VALUE:
            skip_next, optional_value = token in FLAGS_WITH_VALUE, token in FLAGS_WITH_OPTIONAL_VALUE
            continue
        if token.startswith("-"):
            raise UnreadableCommand(f"{where}: unknown flag {token!r} in {command.text!r}")
        arguments.append(token)
    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
    except HydraException as error:
        raise UnreadableCommand(f"{where}: Hydra cannot parse {arguments}: {error}") from error
    overrides = []
    for override in parsed:
        if override.is_sweep_override():
            first = next(override.sweep_string_iterator())
            overrides.append(f"{override.get_key_element()}={first}")
        else:
            overrides.append(override.input_line)
    return [Composition(name, overrides) for name in names]


def _all_documented_commands() -> list[DocumentedCommand]:
    return [command for page in PAGES for command in documented_commands(page)]


DOCUMENTED = _all_documented_commands()


def test_the_pages_hold_commands():
    """The collection itself works: README and the manual show commands of every kind this test reads."""
    assert len(DOCUMENTED) >= 40, [command.where for command in DOCUMENTED]
    assert {command.page.name for command in DOCUMENTED} >= {"README.md", "training.md", "evaluation.md"}


def chooses_a_group(override) -> bool:
    """`experiment=wrist`, `model/scheduler=cosine`, `hydra/launcher=slurm`: an override the defaults list takes."""
    return "/" in override.key_or_group or (CONF_DIR / override.key_or_group).is_dir()


class Composer:
    """Hydra's composition of a command's config, the defaults list composed once per choice of groups."""

    def __init__(self):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.parser = OverridesParser.create()
        self.bases: dict[tuple[str, tuple[str, ...]], object] = {}
        self.checked: dict[tuple[str, tuple[str, ...]], Exception | None] = {}

    def check(self, composition: Composition) -> None:
        """Raises what composing raises; a composition the pages repeat is composed once."""
        key = (composition.config_name, tuple(composition.overrides))
        if key not in self.checked:
            try:
                self.compose(composition)
                self.checked[key] = None
            except Exception as error:  # noqa: BLE001 - kept, and raised for every command that repeats it
                self.checked[key] = error
        if self.checked[key] is not None:
            raise self.checked[key]

    def compose(self, composition: Composition):
        import copy

        from hydra import compose
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        overrides = self.parser.parse_overrides(composition.overrides)
        groups = tuple(override.input_line for override in overrides if chooses_a_group(override))
        key = (composition.config_name, groups)
        if key not in self.bases:
            try:
                self.bases[key] = compose(config_name=composition.config_name, overrides=list(groups),
                                          return_hydra_config=True)
            except Exception as error:  # noqa: BLE001 - kept, and raised for every command making this choice
                self.bases[key] = error
        if isinstance(self.bases[key], Exception):
            raise self.bases[key]
        config = copy.deepcopy(self.bases[key])
        ConfigLoaderImpl._apply_overrides_to_config([o for o in overrides if not chooses_a_group(o)], config)
        return config


@pytest.fixture(scope="module")
def composer():
    """One Hydra initialisation over the real conf/ for every composition."""
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield Composer()


@pytest.mark.parametrize("command", DOCUMENTED, ids=[command.where for command in DOCUMENTED])
def test_documented_command_composes(command: DocumentedCommand, composer: Composer):
    try:
        planned = compositions(command)
    except UnreadableCommand as error:
        pytest.fail(str(error), pytrace=False)
    for composition in planned:
        try:
            composer.check(composition)
        except Exception as error:  # noqa: BLE001 - Hydra raises several kinds: each names the setting or group
            pytest.fail(f"{command.where}: `{command.text}` does not compose (mura.{composition.config_name} with "
                        f"{composition.overrides}): {type(error).__name__}: {error}", pytrace=False)


def _comparable(config) -> dict:
    """The composed config less Hydra's records of how it was asked for (override lists, choices, the job's
    override-derived name), which the two steps do not write."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(config, resolve=False)
    hydra = container["hydra"]
    hydra.pop("overrides")
    hydra["runtime"].pop("choices")
    hydra["job"].pop("override_dirname")
    return container


def test_two_steps_equal_compose(composer: Composer):
    from hydra import compose

    for composition in (
        Composition("train", ["experiment=cv_small", "data.root=/r", "data.cv_fold=0", "model/scheduler=warmup_cosine",
                              "model.ema.decay=0.99", "hydra.sweep.dir=outputs/x"]),
        Composition("train", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "experiment=all_parts",
                              "seed=1", "~callbacks.gradcam", "+trainer.limit_val_batches=2"]),
        Composition("evaluate", ["ckpt_path=[a.ckpt,b.ckpt]", "eval.tta=true", "data.body_parts=[XR_WRIST]"]),
    ):
        assert _comparable(composer.compose(composition)) == _comparable(
            compose(config_name=composition.config_name, overrides=composition.overrides, return_hydra_config=True))


# The reader itself: each kind of line, and that what it cannot read fails.

def _command(text: str, variables: dict[str, str] | None = None) -> list[Composition]:
    return compositions(DocumentedCommand(REPO / "README.md", 7, text, variables or {}))


def test_sweeps_comments_quotes_and_pipes():
    [composition] = _command("python -m mura.train -m experiment=cv_small data.cv_fold=0,1,2,3,4 "
                             "'~callbacks.gradcam' hydra.sweep.dir=outputs/x   # the seed's # recipe")
    assert composition == Composition("train", ["experiment=cv_small", "data.cv_fold=0", "~callbacks.gradcam",
                                                "hydra.sweep.dir=outputs/x"])
    [composition] = _command("python -m mura.predict ckpt_path=best.ckpt input=/s | jq -r 'select(.abnormal)'")
    assert composition.overrides == ["ckpt_path=best.ckpt", "input=/s"]
    [composition] = _command("python -m mura.summarize 'runs=[outputs/a,outputs/b]'")
    assert composition.overrides == ["runs=[outputs/a,outputs/b]"]
    assert strip_comment("x=a#b '#c' # d") == "x=a#b '#c' "


def test_placeholders_and_variables():
    [composition] = _command("python -m mura.evaluate ckpt_path=<wrist run>/checkpoints/best.ckpt data.root=$MURA "
                             "x=outputs/multirun_<day>_<time>")
    assert composition.overrides == ["ckpt_path=wrist_run/checkpoints/best.ckpt", "data.root=/data/MURA-v1.1",
                                     "x=outputs/multirun_day_time"]
    [composition] = _command("python -m mura.train <same overrides> hydra.run.dir=<run folder> ckpt_path=last")
    assert composition.overrides == ["hydra.run.dir=run_folder", "ckpt_path=last"]
    [composition] = _command("python -m mura.evaluate ckpt_path=[...five best.ckpt...] data.root=$R", {"R": "/r"})
    assert composition.overrides == ["ckpt_path=[placeholder]", "data.root=/r"]
    [composition] = _command("python -m mura.audit data.root=... ...more overrides...")
    assert composition.overrides == ["data.root=..."]
    assert [c.config_name for c in _command("python -m mura.<command> --help")] == list(COMMANDS)
    [composition] = _command("python -m mura.train --info defaults experiment=demo --cfg job --resolve")
    assert composition.overrides == ["experiment=demo"]
    [composition] = _command("python -m mura.train --info experiment=demo")
    assert composition.overrides == ["experiment=demo"]
    with pytest.raises(UnreadableCommand, match=r"README.md:7: unknown shell variable \$NOPE"):
        _command("python -m mura.train data.root=$NOPE")


def test_unreadable_lines_fail_with_their_place():
    for text in ("python -m mura.train data.root='/unclosed", "python -m mura.nothing x=1",
                 "python -m mura.train --no-such-flag", "python -m mura.train experiment=wrist stray_word"):
        with pytest.raises(UnreadableCommand, match=r"^README.md:7: "):
            _command(text)


def test_code_spans_of_a_page():
    page = ("Run `python -m mura.audit\ndata.root=/d` first.\n\n"
            "```bash\nR=/r   # a root\npython -m mura.train -m data.root=$R \\\n    seed=1,2\n"
            "make demo\n```\n\nNot code: python -m mura.train x=1.\n")
    pieces = code_spans(page)
    assert (1, "python -m mura.audit data.root=/d", {}) in pieces
    assert (6, "python -m mura.train -m data.root=$R seed=1,2", {"R": "/r"}) in pieces
    assert not any("x=1" in code for _, code, _ in pieces)


def test_a_renamed_setting_fails(composer: Composer):
    """The composition the suite relies on does catch renames: a setting or a group that is not there."""
    for overrides in (["data.bach_size=4"], ["experiment=wirst"], ["hydra/launcher=slurm", "hydra.launcher.partitin=x"],
                      ["experiment=demo", "~callbacks.no_such_callback"], ["experiment=demo", "+seed=3"]):
        with pytest.raises(Exception):  # noqa: B017 - Hydra's error types differ by case
            composer.compose(Composition("train", overrides))


# Every `make <target>` the pages name exists.

def makefile_targets() -> set[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.$()/ -]+?)\s*:(?!=)", line)
        if match and not line.startswith(("\t", "#")):
            targets.update(match[1].split())
    return targets


def named_make_targets() -> list[tuple[str, str]]:
    named = []
    for page in PAGES:
        for line, code, _ in code_spans(page.read_text()):
            for match in _MAKE.finditer(code):
                named.append((f"{page.relative_to(REPO)}:{line}", match[1]))
    return named


def test_every_named_make_target_exists():
    named = named_make_targets()
    assert {target for _, target in named} >= {"demo", "test", "docs"}
    targets = makefile_targets()
    missing = [f"{where}: make {target}" for where, target in named if target not in targets]
    assert not missing, f"targets the pages name but the Makefile lacks: {missing}"


# The configuration reference: generated from conf/ at build time, so it covers every file and key.

def test_the_configuration_page_is_generated():
    page = (DOCS / "configuration.md").read_text()
    assert page.count(MARKER) == 1, "docs/configuration.md holds the marker the build replaces with the reference"
    hooks = (DOCS / "hooks.py").read_text()
    assert "render_reference" in hooks and "MARKER" in hooks
    mkdocs = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert "docs/hooks.py" in mkdocs["hooks"]
    assert {"configuration.md", "results.md", "changelog.md"} <= {page for entry in mkdocs["nav"]
                                                                  for page in entry.values()}


def test_the_hook_fills_the_page():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mura_docs_hooks", DOCS / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)

    class Page:
        class file:  # noqa: N801 - mkdocs' attribute name
            src_uri = "configuration.md"

    filled = hooks.on_page_markdown((DOCS / "configuration.md").read_text(), page=Page(), config={}, files=None)
    assert MARKER not in filled
    assert render_reference(CONF_DIR) in filled


def _leaf_keys(node: dict, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    keys = []
    for key, value in node.items():
        here = (*path, str(key))
        if here in (("defaults",), ("hydra", "help", "template")):
            continue
        keys += _leaf_keys(value, here) if isinstance(value, dict) and value else [here]
    return keys


def test_the_reference_covers_every_file_group_and_key():
    reference = render_reference(CONF_DIR)
    configs = {config.path: config for config in read_conf(CONF_DIR)}
    files = sorted(path.relative_to(CONF_DIR).as_posix() for path in CONF_DIR.rglob("*.yaml"))
    assert sorted(configs) == files
    groups = {Path(path).parent.as_posix() for path in files} - {"."}
    assert set(GROUP_PURPOSES) == groups, "GROUP_PURPOSES in mura/app/config_reference.py: one line per group"
    for group in groups:
        assert f"\n### {group}\n\n{GROUP_PURPOSES[group]}\n" in reference, group
    for path in files:
        config = configs[path]
        heading = f"#### {config.group}={config.option}" if config.group else f"### mura.{config.option}"
        assert f"\n{heading}\n" in reference, heading
        keys = {setting.key for setting in config.settings}
        for leaf in _leaf_keys(yaml.safe_load((CONF_DIR / path).read_text()) or {}):
            dotted = ".".join(part for part in (config.package, *leaf) if part)
            assert dotted in keys, f"conf/{path}: {dotted} missing from the reference"


def test_the_reference_keeps_values_and_comments():
    configs = {config.path: config for config in read_conf(CONF_DIR)}
    data = {setting.key: setting for setting in configs["data/mura.yaml"].settings}
    assert data["data.val_fraction"].value == "0.1"
    assert "grouped by patient" in data["data.val_fraction"].comment
    warmup = configs["model/scheduler/warmup_cosine.yaml"]
    assert warmup.package == "model" and "model.scheduler.warmup_epochs" in {s.key for s in warmup.settings}
    assert configs["experiment/wrist.yaml"].package == ""
    assert configs["hydra/launcher/slurm.yaml"].package == "hydra.launcher"
    assert "mura.train" in configs["train.yaml"].help
    model = {setting.key: setting for setting in configs["model/densenet169.yaml"].settings}
    assert model["model.optimizer.lr"].value == "1.0e-4"  # as the file spells it
    reference = render_reference(CONF_DIR)
    # a header's command, continued over two lines, is one code block; its prose a paragraph
    assert "```bash\npython -m mura.train -m hydra/launcher=slurm hydra.launcher.partition=gpu \\\n    experiment=" \
        in reference
    assert "\n| `data.val_fraction` | `0.1` | of train patients, grouped by patient," in reference


def test_the_comment_scan():
    from mura.app.config_reference import scan_lines

    text = ("# header line\n# @package _global_\n"
            "a:\n  # above b\n  b: 1   # b's comment, which goes\n       # on here\n"
            "  c: [x,\n      y]  # flow\n  d: 2   # d alone\n"
            "help: |\n  e: not a key\n"
            "f: 3   # one sentence wrapped over two keys, the\n"
            "g: 4   # second half\n")
    header, lines = scan_lines(text)
    assert header == ["header line"]
    assert lines[("a", "b")].lead == "above b"
    assert lines[("a", "b")].comment == "b's comment, which goes on here"
    assert lines[("a", "b")].raw_value == "1"
    assert lines[("a", "d")].comment == "d alone"
    assert ("help", "e") not in lines and ("e",) not in lines
    assert lines[("f",)].comment == lines[("g",)].comment == "one sentence wrapped over two keys, the second half"


# One source: what the pages include from README.md and CHANGELOG.md (pymdownx.snippets) is there to include.

def test_every_included_snippet_exists():
    included = [(page.name, match[1], match[2]) for page in sorted(DOCS.glob("*.md"))
                for match in re.finditer(r'^--8<-- "([^":]+)(?::([\w-]+))?"$', page.read_text(), re.MULTILINE)]
    assert ("results.md", "README.md", "results") in included and ("changelog.md", "CHANGELOG.md", None) in included
    for page, path, section in included:
        assert (REPO / path).is_file(), f"docs/{page} includes {path}, which is not there"
        if section:
            text = (REPO / path).read_text()
            for end in ("start", "end"):
                assert f"<!-- --8<-- [{end}:{section}] -->" in text, \
                    f"docs/{page} includes the section {section!r} of {path}, which lacks its {end} marker"
