"""Shared fixtures: one tiny synthetic MURA tree per session, and writable copies for tests that break it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mura.data.synthetic import SyntheticConfig, generate

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each (and in the commands they start), or torch's
    # default of one thread per core oversubscribes the machine.
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

TINY_SYNTHETIC = SyntheticConfig(
    seed=3,
    train_patients_per_part=5,
    valid_patients_per_part=2,
    image_size=96,
    max_views=3,
    workers=1,
    edge_cases=True,
)


@pytest.fixture(scope="session", autouse=True)
def data_dir_outside_the_checkout(tmp_path_factory) -> Path:
    """`paths.data_dir` (caches, generated data) of every run here, and of the commands the tests start, is a
    temporary folder: a test never writes into the checkout's data/."""
    data_dir = tmp_path_factory.mktemp("data_dir")
    os.environ["MURA_DATA_DIR"] = str(data_dir)
    # The jobs registry (mura.app.cpu_share) of the tests and the commands they start: a user's trainings beside the
    # suite neither count the tests as jobs nor are counted by them
    os.environ["MURA_JOBS_DIR"] = str(tmp_path_factory.mktemp("jobs"))
    return data_dir


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A read-only-by-convention tiny synthetic release (do not modify; use `writable_root`)."""
    root = tmp_path_factory.mktemp("synthetic") / "MURA-v1.1"
    generate(root, TINY_SYNTHETIC, progress=False)
    return root


@pytest.fixture
def writable_root(synthetic_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "MURA-v1.1"
    shutil.copytree(synthetic_root, copy)
    return copy


def csv_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def write_lines(path: Path, lines: list[str], newline: str = "\n") -> None:
    path.write_bytes("".join(line + newline for line in lines).encode())


REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"


def compose_config(overrides: list[str], config_name: str = "train"):
    """The real Hydra composition of conf/, as the command line would do it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def tiny_training_overrides(root: Path, output_dir: Path) -> list[str]:
    """Shrink the demo to seconds on the tiny tree: small images, few batches, no workers."""
    return [
        "experiment=demo",
        f"data.root={root}",
        "data.image_size=48",
        "data.batch_size=16",
        "data.num_workers=0",
        "data.val_fraction=0.3",
        f"paths.output_dir={output_dir}",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "callbacks.gradcam.every_n_epochs=0",  # the final gallery only: a gallery costs a second or two
        "callbacks.gradcam.studies_per_class=1",
    ]


@pytest.fixture(scope="session")
def trained_run(synthetic_root: Path, tmp_path_factory) -> tuple[Path, dict]:
    """One real two-epoch training run on the tiny tree, shared by the tests that read run folders."""
    from mura.callbacks import timing
    from mura.train import train

    # Counted from its own start, whichever test runs first in this process (tests/test_callbacks.py tests the origins)
    timing._process_start_claimed = True
    output_dir = tmp_path_factory.mktemp("trained_run")
    metrics = train(compose_config([*tiny_training_overrides(synthetic_root, output_dir), "callbacks.gradcam.every_n_epochs=1"]))
    return output_dir, metrics


def run_main_in_process(command: str, args: list[str]) -> int | str | None:
    """`python -m mura.COMMAND ARGS` through the command's own Hydra main, in this process (one Python start-up
    per command would cost seconds each); returns its exit code (0 when the main returns)."""
    import importlib
    from unittest.mock import patch

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    main = importlib.import_module(f"mura.{command}").main
    # HYDRA_MAIN_MODULE: Hydra finds conf/ from the command's file, as under `python -m` (module __main__).
    with patch("sys.argv", [f"mura/{command}.py", *args]), patch.dict(os.environ, {"HYDRA_MAIN_MODULE": "__main__"}):
        try:
            main()
            code = 0
        except SystemExit as stopped:
            code = stopped.code
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None  # as after a command: no Hydra run is going on
    return code


@pytest.fixture
def saved_figures(monkeypatch) -> list:
    """Every matplotlib Figure saved during the test, in order, as drawn (they are read back by their axes)."""
    from matplotlib.figure import Figure

    figures, save = [], Figure.savefig

    def capture(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    return figures
