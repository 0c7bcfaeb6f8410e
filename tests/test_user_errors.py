"""Every command gives a user's mistake back as one clear line and exit code 2: no traceback, no Hydra wrapping,
errors raised while Hydra instantiates a config included."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from unittest.mock import patch

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

# A mistake per command that each makes before any work, and what its message must say. {root}: the synthetic tree.
MISTAKES = {
    # raised by the data module inside hydra.utils.instantiate: Hydra wrapped it ("Error in call to target", exit 1)
    "train": (["data.root={root}", "data.body_parts=[XR_WRST]"], "unknown body part 'XR_WRST' in data.body_parts"),
    # a mandatory setting left out: OmegaConf's MissingMandatoryValue and a stack trace (exit 1)
    "evaluate": (["data.root={root}"], "ckpt_path is not set: pass ckpt_path=..."),
    "predict": (["ckpt_path=best.ckpt"], "input is not set: pass input=..."),
    "export": ([], "ckpt_path is not set: pass ckpt_path=..."),
    "summarize": ([], "runs is not set: pass runs=..."),
    "compare": ([], "runs is not set: pass runs=..."),
    "audit": (["data.root={root}/no_such_folder"], "no_such_folder' is not a folder"),
    "synth": (["data.root={root}"], "mura.synth writes into data.synthetic.dir"),
    "bench": (["runs=[pipeline]"], "no measurement called pipeline"),
}


def run_command(command: str, args: list[str]) -> int | str | None:
    """`python -m mura.COMMAND ARGS` through the command's own Hydra main, in this process (one Python start-up
    per command would cost seconds each); returns its exit code."""
    main = importlib.import_module(f"mura.{command}").main
    # HYDRA_MAIN_MODULE: Hydra finds conf/ from the command's file, as under `python -m` (module __main__).
    with patch("sys.argv", [f"mura/{command}.py", *args]), patch.dict(os.environ, {"HYDRA_MAIN_MODULE": "__main__"}), \
            pytest.raises(SystemExit) as stopped:
        main()
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None  # as after a command: no Hydra run is going on
    return stopped.value.code


@pytest.mark.parametrize("command", sorted(MISTAKES))
def test_a_user_error_is_one_clear_line_and_exit_2(command: str, synthetic_root: Path, tmp_path: Path, capfd):
    args, message = MISTAKES[command]
    code = run_command(command, [arg.format(root=synthetic_root) for arg in args] + [f"hydra.run.dir={tmp_path / 'run'}"])
    printed = capfd.readouterr()
    output = printed.out + printed.err
    assert code == 2, output[-3000:]
    assert message in output
    assert [noise for noise in ("Traceback", "Error in call to target", "HYDRA_FULL_ERROR", "Error executing job")
            if noise in output] == []
