"""Every command gives a user's mistake back as one clear line and exit code 2: no traceback, no Hydra wrapping,
errors raised while Hydra instantiates a config included."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_main_in_process

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


@pytest.mark.parametrize("command", sorted(MISTAKES))
def test_a_user_error_is_one_clear_line_and_exit_2(command: str, synthetic_root: Path, tmp_path: Path, capfd):
    args, message = MISTAKES[command]
    code = run_main_in_process(command, [arg.format(root=synthetic_root) for arg in args] + [f"hydra.run.dir={tmp_path / 'run'}"])
    printed = capfd.readouterr()
    output = printed.out + printed.err
    assert code == 2, output[-3000:]
    assert message in output
    assert [noise for noise in ("Traceback", "Error in call to target", "HYDRA_FULL_ERROR", "Error executing job")
            if noise in output] == []
