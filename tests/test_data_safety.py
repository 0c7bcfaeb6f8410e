"""A user's data is sacred: no command writes, moves or deletes anything inside data.root, and the synthetic
generator replaces only trees it made itself."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from command_process import run_command
from conftest import TINY_SYNTHETIC, compose_config
from mura.data.datamodule import MuraDataModule
from mura.data.index import MuraDataError
from mura.data.synthetic import (
    MARKER_FILE,
    NotASyntheticTreeError,
    ensure_synthetic,
    generate,
    is_synthetic_tree,
)

USER_FILE = "my_notes.txt"


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root (hidden ones too) with the hash of its bytes, and every folder."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
            for path in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def real_layout_root(synthetic_root: Path, tmp_path_factory) -> Path:
    """A MURA-v1.1 tree as a user has it: the release's layout, no generator marker, and a file of the user's."""
    root = tmp_path_factory.mktemp("user_data") / "MURA-v1.1"
    shutil.copytree(synthetic_root, root)
    (root / MARKER_FILE).unlink()
    (root / USER_FILE).write_text("my annotations, not in any CSV\n")
    return root


@pytest.fixture
def untouched(real_layout_root: Path):
    """Asserts, after the test, that every file of the user's tree is byte-identical and nothing was added."""
    before = tree_digest(real_layout_root)
    yield real_layout_root
    assert tree_digest(real_layout_root) == before


# -- the generator -------------------------------------------------------------------------------------------


def test_the_generator_refuses_a_folder_it_did_not_make_and_touches_nothing(untouched: Path):
    with pytest.raises(NotASyntheticTreeError, match=f"{untouched}.*not made by mura's synthetic generator"):
        generate(untouched, TINY_SYNTHETIC, progress=False)
    with pytest.raises(NotASyntheticTreeError):
        ensure_synthetic(untouched, TINY_SYNTHETIC, progress=False)
    assert not untouched.with_name(untouched.name + ".partial").exists()


def test_the_generator_refuses_a_foreign_staging_folder(tmp_path: Path):
    root = tmp_path / "MURA-v1.1"
    staging = tmp_path / "MURA-v1.1.partial"
    staging.mkdir()
    (staging / "precious.txt").write_text("not the generator's")
    with pytest.raises(NotASyntheticTreeError, match="MURA-v1.1.partial"):
        generate(root, TINY_SYNTHETIC, progress=False)
    assert (staging / "precious.txt").read_text() == "not the generator's" and not root.exists()


def test_the_generator_replaces_its_own_tree_and_fills_an_empty_folder(tmp_path: Path):
    empty = tmp_path / "empty" / "MURA-v1.1"
    empty.mkdir(parents=True)
    config = TINY_SYNTHETIC.__class__(**{**TINY_SYNTHETIC.__dict__, "train_patients_per_part": 1, "valid_patients_per_part": 1})
    generate(empty, config, progress=False)
    assert is_synthetic_tree(empty) and (empty / "train_image_paths.csv").is_file()
    (empty / "stale.txt").write_text("left by an older generation")
    generate(empty, config, progress=False)  # its own tree: replaced whole
    assert not (empty / "stale.txt").exists() and is_synthetic_tree(empty)
    assert not list(tmp_path.glob("empty/*.json"))  # nothing written beside the tree


# -- every command, against a user's tree ---------------------------------------------------------------------


@pytest.mark.slow
def test_readme_evaluate_command_reads_the_real_tree_and_writes_nothing_in_it(trained_run, untouched: Path, tmp_path: Path):
    """The README's command as written (data.root given, default configs): it used to regenerate the folder."""
    best = trained_run[0] / "checkpoints" / "best.ckpt"
    result = run_command("mura.evaluate", [f"ckpt_path={best}", f"data.root={untouched}", f"hydra.run.dir={tmp_path / 'eval'}"],
                         cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"test split ({untouched})" in result.stdout


@pytest.mark.slow
def test_plain_train_with_a_user_root_reads_it_and_writes_nothing_in_it(untouched: Path, tmp_path: Path):
    """`python -m mura.train data.root=...` without an experiment: real data, the default configs, one real epoch."""
    result = run_command("mura.train", [
        f"data.root={untouched}", "data.image_size=32", "data.num_workers=0", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2", "trainer.enable_progress_bar=false", "callbacks.gradcam.every_n_epochs=0",
        f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Test split ({untouched})" in result.stdout
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()


def test_every_other_command_leaves_the_user_tree_byte_identical(trained_run, untouched: Path, tmp_path: Path, monkeypatch):
    from mura.audit import run_audit
    from mura.bench import run_bench
    from mura.evaluate import evaluate
    from mura.predict import predict
    from mura.summarize import summarize
    from mura.train import train

    run_dir = trained_run[0]
    # An experiment whose data config is the synthetic one: a user's data.root still means their real data.
    train(compose_config(["experiment=demo", f"data.root={untouched}", "data.image_size=32", "data.num_workers=0",
                          "trainer.max_epochs=1", "callbacks.gradcam.every_n_epochs=0", "trainer.enable_progress_bar=false",
                          f"paths.output_dir={tmp_path / 'demo'}"]))
    splits = (tmp_path / "demo" / "splits.csv").read_text()
    assert "train/XR_WRIST" in splits and not (untouched.parent / "synthetic").exists()
    # MURA_ROOT instead of data.root, with a command that used to default to synthetic data.
    monkeypatch.setenv("MURA_ROOT", str(untouched))
    evaluate(compose_config([f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", "data.num_workers=0",
                             f"paths.output_dir={tmp_path / 'eval'}"], config_name="evaluate"))
    assert str(untouched) in (tmp_path / "eval" / "report.md").read_text()
    monkeypatch.delenv("MURA_ROOT")
    run_audit(compose_config([f"data.root={untouched}", "workers=1", f"paths.output_dir={tmp_path / 'audit'}"], config_name="audit"))
    study = next((untouched / "valid" / "XR_WRIST").glob("patient*/study*"))
    predict(compose_config([f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"input={study}", "cam=true",
                            f"paths.output_dir={tmp_path / 'predict'}"], config_name="predict"))
    summarize(compose_config([f"runs={tmp_path / 'demo'}", f"paths.output_dir={tmp_path / 'summary'}"], config_name="summarize"))
    run_bench(compose_config([f"data_root={untouched}", "runs=[data]", "image_size=32", "workers=0",
                              f"paths.output_dir={tmp_path / 'bench'}"], config_name="bench"))
    assert (tmp_path / "bench" / "bench.json").is_file()


def test_asking_for_synthetic_data_in_a_user_folder_is_refused(untouched: Path, tmp_path: Path):
    from mura.app.errors import ConfigError
    from mura.synth import synthesize

    with pytest.raises(ConfigError, match="data.root names real data"):
        synthesize(compose_config([f"data.root={untouched}", f"paths.output_dir={tmp_path}"], config_name="synth"))
    with pytest.raises(NotASyntheticTreeError):
        synthesize(compose_config([f"data.synthetic.dir={untouched}", f"paths.output_dir={tmp_path}"], config_name="synth"))
    cfg = compose_config(["data=synthetic", f"data.synthetic.dir={untouched}", f"paths.output_dir={tmp_path}"])
    from hydra.utils import instantiate

    with pytest.raises(NotASyntheticTreeError):
        instantiate(cfg.data).prepare_data()


@pytest.mark.parametrize("setting", ["cache_dir", "splits_dir"])
def test_outputs_inside_the_data_root_are_refused(untouched: Path, setting: str):
    module = MuraDataModule(root=str(untouched), num_workers=0, cache=setting == "cache_dir",
                            **{setting: str(untouched / "train" / "cache")})
    with pytest.raises(MuraDataError, match="inside data.root"):
        module.setup("fit")


def test_synthetic_data_only_when_asked(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MURA_ROOT", str(tmp_path / "real"))
    assert compose_config([]).data.root == str(tmp_path / "real")  # the default data config is real data
    assert compose_config(["data=synthetic"]).data.root is None  # MURA_ROOT is not asking for synthetic data
    monkeypatch.delenv("MURA_ROOT")
    with pytest.raises(MuraDataError, match="data.root is not set.*data=synthetic"):
        MuraDataModule(root=compose_config([]).data.root).prepare_data()


def test_a_tree_of_the_previous_generator_is_recognised_and_replaced(tmp_path: Path):
    """`make demo` before this version left data/synthetic/MURA-v1.1 with its settings beside it, no marker inside."""
    import json
    from dataclasses import asdict

    from mura.data.synthetic import MANIFEST_FILE

    root = tmp_path / "synthetic" / "MURA-v1.1"
    config = TINY_SYNTHETIC.__class__(**{**TINY_SYNTHETIC.__dict__, "train_patients_per_part": 1, "valid_patients_per_part": 1})
    generate(root, config, progress=False)
    (root / MARKER_FILE).unlink()
    (root.parent / MARKER_FILE).write_text(json.dumps(asdict(config)))
    assert is_synthetic_tree(root)
    ensure_synthetic(root, config, progress=False)  # regenerated in the new form, not refused
    assert (root / MARKER_FILE).is_file()
    (root / MANIFEST_FILE).unlink()  # without the manifest it could be anybody's folder
    (root / MARKER_FILE).unlink()
    assert not is_synthetic_tree(root)


def test_a_run_folder_inside_the_dataset_is_refused_before_hydra_creates_it(untouched: Path):
    """Started from inside the dataset, the default run folder (outputs/...) would be inside it: refused before Hydra
    writes its .hydra/ and log there."""
    result = run_command("mura.audit", ["data.root=."], cwd=untouched)
    assert result.returncode == 2
    assert "is inside data.root" in result.stderr and "run the command from outside the dataset" in result.stderr


def test_mura_data_dir_pointing_at_a_release_or_into_the_dataset_is_refused(untouched: Path, tmp_path: Path):
    from hydra import compose, initialize_config_dir

    from conftest import CONF_DIR
    from mura.app.guard import check_outputs

    def hydra_config(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)

    for overrides in ([f"paths.data_dir={untouched}", "experiment=demo"],  # MURA_DATA_DIR taken for the dataset
                      [f"data.root={untouched}", f"hydra.run.dir={untouched / 'runs'}"],
                      [f"data.root={untouched}", f"data.cache_dir={untouched / 'cache'}"]):
        with pytest.raises(SystemExit) as stopped:
            check_outputs(hydra_config(*overrides), "hydra.run.dir")
        assert stopped.value.code == 2, overrides
    check_outputs(hydra_config(f"data.root={untouched}", f"hydra.run.dir={tmp_path / 'run'}"), "hydra.run.dir")


def test_a_home_relative_root_is_expanded(synthetic_root: Path, monkeypatch):
    """`~/MURA-v1.1` used to make every image look missing to the up-front check."""
    monkeypatch.setenv("HOME", str(synthetic_root.parent))
    module = MuraDataModule(root="~/MURA-v1.1", num_workers=0, val_fraction=0.3)
    module.setup("fit")
    assert module.root == str(synthetic_root) and not module.skipped
