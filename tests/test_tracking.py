"""Experiment tracking: what a tiny real run leaves in MLflow's store (read back with MLflow's own client) and in an
offline wandb run (read back from wandb's own record log), and the pieces that shape what the trackers receive."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_config, tiny_training_overrides
from mura.callbacks.artifacts import (
    MAX_PARAMETER_LENGTH,
    RUN_FILES,
    TRACKER_RUNS_FILE,
    config_parameters,
    continue_tracker_runs,
    default_run_name,
    mlflow_logger,
)


def tiny_run(root: Path, output_dir: Path, *overrides: str) -> None:
    """One epoch on the tiny tree; the final gallery only, uncapped: every body part of the validation split."""
    from mura.train import train

    train(compose_config([*tiny_training_overrides(root, output_dir), "trainer.max_epochs=1",
                          "callbacks.gradcam.studies_per_class=null", "callbacks.gradcam.every_n_epochs=0", *overrides]))


def run_folder_files(output_dir: Path) -> set[str]:
    """What the trackers should hold of a run folder: RUN_FILES it wrote and every Grad-CAM picture."""
    written = {name for name in RUN_FILES if (output_dir / name).is_file()}
    return written | {path.relative_to(output_dir).as_posix() for path in (output_dir / "gradcam").rglob("*.png")}


def gallery_parts(names: list[str]) -> dict[str, int]:
    """Pictures per body part (each picture is named <body part>_<patient>_<study>.png)."""
    return pd.Series([name.split("_patient")[0] for name in names]).value_counts().to_dict()


def val_parts(output_dir: Path) -> dict[str, int]:
    """Classes per body part in the run's validation split: what an uncapped gallery shows, one study each."""
    splits = pd.read_csv(output_dir / "splits.csv")
    return splits[splits["split"] == "val"].groupby("body_part")["label"].nunique().to_dict()


@pytest.mark.slow
def test_mlflow_store_reads_back_with_mlflows_own_client(synthetic_root: Path, tmp_path: Path):
    from mlflow.tracking import MlflowClient

    output_dir = tmp_path / "2026-01-02_10-00-00"
    tiny_run(synthetic_root, output_dir, "logger=many", "++tags=[tiny]")
    client = MlflowClient(f"sqlite:///{output_dir / 'mlflow' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    run_id = run.info.run_id
    assert (run.info.run_name, run.info.status, run.data.tags["tiny"]) == ("2026-01-02_10-00-00", "FINISHED", "true")

    # Metrics by name and step: what the CSV logger beside it recorded, and the test scores of metrics.json.
    csv_metrics = pd.read_csv(output_dir / "csv" / "metrics.csv")
    for name in ("val/loss", "val/study/kappa", "train/loss"):
        logged = csv_metrics.dropna(subset=[name])
        history = client.get_metric_history(run_id, name)
        assert [metric.step for metric in history] == logged["step"].tolist() and history
        assert [metric.value for metric in history] == pytest.approx(logged[name].tolist())
    report = json.loads((output_dir / "metrics.json").read_text())
    assert run.data.metrics["test/study/kappa"] == pytest.approx(report["study"]["overall"]["kappa"])

    # The resolved config as dotted parameters, beside the model's own hyperparameters.
    params = run.data.params
    assert (params["data.image_size"], params["trainer.max_epochs"], params["selection.metric"]) == ("48", "1", "val/loss")
    assert params["paths.output_dir"] == str(output_dir)
    assert params["backbone"] == params["model.backbone"]

    # The artifacts: the run folder's files and every Grad-CAM picture, in the folder's layout, byte for byte.
    def artifact_paths(path: str | None = None) -> set[str]:
        listed = client.list_artifacts(run_id, path)
        return {entry.path for entry in listed if not entry.is_dir} | {
            nested for entry in listed if entry.is_dir for nested in artifact_paths(entry.path)}

    expected = run_folder_files(output_dir)
    assert {"curves.png", "roc.png", "confusion.png", "metrics.json", "splits.csv", "selection.json", "report.md"} <= expected
    assert artifact_paths() == expected
    for name in ("metrics.json", "roc.png"):
        downloaded = Path(client.download_artifacts(run_id, name, str(tmp_path)))
        assert downloaded.read_bytes() == (output_dir / name).read_bytes()
    # The gallery covers every body part the run validated on: a normal and an abnormal study of each, where it has both.
    final = [Path(path).name for path in expected if path.startswith("gradcam/final/")]
    assert gallery_parts(final) == val_parts(output_dir)
    assert len(val_parts(output_dir)) == 7

    # The rest of logger=many: TensorBoard's event file beside the CSV logger's metrics.
    assert list((output_dir / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_a_resumed_run_continues_its_mlflow_run_and_a_later_run_keeps_its_own_store(synthetic_root: Path, tmp_path: Path,
                                                                                     monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, other = tmp_path / "run", tmp_path / "other"
    one_picture = "callbacks.gradcam.studies_per_class=1"  # which pictures go to MLflow: the test above
    tiny_run(synthetic_root, first, "logger=mlflow", one_picture)
    tiny_run(synthetic_root, first, "logger=mlflow", one_picture, "trainer.max_epochs=2", "ckpt_path=last")  # resumed, same process
    client = MlflowClient(f"sqlite:///{first / 'mlflow' / 'mlflow.db'}")
    [run] = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    assert json.loads((first / "tracker_runs.json").read_text()) == {"mlflow": run.info.run_id}
    # One run holds both epochs; the settings the resume changed are tags, the first run's parameters stay.
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 2
    assert (run.data.params["trainer.max_epochs"], run.data.params["ckpt_path"]) == ("1", "None")
    assert {key: value for key, value in run.data.tags.items() if key.startswith("resumed.")} == {
        "resumed.trainer.max_epochs": "2", "resumed.ckpt_path": "last", "resumed.model.scheduler.T_max": "2"}
    # Lightning sets MLFLOW_TRACKING_URI for the process on a run's first log; a later run of the process (a sweep's
    # next job) must not take it for the user's and log into the first run's store.
    tiny_run(synthetic_root, other, "logger=mlflow", one_picture, "test=false")  # a run of its own is all it needs to be
    assert "MLFLOW_TRACKING_URI" not in os.environ
    other_client = MlflowClient(f"sqlite:///{other / 'mlflow' / 'mlflow.db'}")
    assert len(other_client.search_runs([experiment.experiment_id for experiment in other_client.search_experiments()])) == 1
    assert len(client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])) == 1


def test_a_resumed_run_hands_its_recorded_tracker_runs_to_the_loggers_that_can_continue_them(tmp_path: Path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_config(["logger=many", "+logger.wandb={_target_: mura.callbacks.artifacts.wandb_logger, offline: false}",
                          f"paths.output_dir={tmp_path}"])
    assert continue_tracker_runs(cfg.logger, tmp_path) is cfg.logger  # nothing recorded: nothing to continue
    (tmp_path / TRACKER_RUNS_FILE).write_text(json.dumps({"mlflow": "0123abcd", "wandb": "abc123"}))
    continued = continue_tracker_runs(cfg.logger, tmp_path)
    assert (continued.mlflow.continue_run_id, continued.wandb.continue_id) == ("0123abcd", "abc123")
    assert "continue_run_id" not in cfg.logger.mlflow and "continue_id" not in continued.csv  # a copy; only those two
    assert instantiate(continued.wandb, save_dir=str(tmp_path))._wandb_init["id"] == "abc123"  # live: the same run
    offline = instantiate(continued.wandb, save_dir=str(tmp_path), offline=True)
    assert offline._wandb_init["id"] is None  # offline wandb cannot continue a run: a new one


def test_a_recorded_mlflow_run_that_was_deleted_is_not_continued(tmp_path: Path, caplog):
    from mlflow.tracking import MlflowClient

    first = mlflow_logger(tmp_path, "x")
    first.log_hyperparams({"a": 1})
    MlflowClient(first._tracking_uri).delete_run(first.run_id)
    continued = mlflow_logger(tmp_path, "x", continue_run_id=first.run_id)
    assert continued._run_id is None and "starting a new run" in caplog.text
    kept = mlflow_logger(tmp_path / "kept", "x")
    kept.log_hyperparams({"a": 1})
    kept.finalize("success")
    again = mlflow_logger(tmp_path / "kept", "x", continue_run_id=kept.run_id)
    assert MlflowClient(kept._tracking_uri).get_run(kept.run_id).info.status == "RUNNING"  # its first part had finished
    again.log_hyperparams({"a": 2, "b": 3})  # a changed parameter becomes a tag, a new one a parameter
    run = MlflowClient(kept._tracking_uri).get_run(kept.run_id)
    assert again.run_id == kept.run_id
    assert (run.data.params, run.data.tags["resumed.a"]) == ({"a": "1", "b": "3"}, "2")


def test_mlflow_logs_to_the_tracking_uri_given(tmp_path: Path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # a store given without an artifact location keeps artifacts under the working directory
    run_dir = tmp_path / "multirun_2026-01-02_10-00-00" / "3"
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared)
    cfg = compose_config(["logger=mlflow", f"paths.output_dir={run_dir}"])
    assert cfg.logger.mlflow.tracking_uri == shared and list(cfg.logger.mlflow.tags) == []
    logger = instantiate(cfg.logger.mlflow)
    logger.log_hyperparams({"data.image_size": 48})
    [run] = MlflowClient(shared).search_runs([logger.experiment_id])
    assert (run.info.run_name, run.data.params) == ("multirun_2026-01-02_10-00-00/3", {"data.image_size": "48"})
    assert not (run_dir / "mlflow").exists()


def read_wandb_records(path: Path) -> list:
    """The records of a .wandb file, decoded with wandb's own protocol buffers: the file is a LevelDB-style log
    (a ':W&B' header, 32 KiB blocks of chunks, each with a CRC, a length and a type: full, first, middle, last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    block, offset, pending, records = 32768, 7, b"", []
    while offset + 7 <= len(data):
        room = block - offset % block
        _, length, kind = struct.unpack("<IHB", data[offset:offset + 7]) if room >= 7 else (0, 0, 0)
        if kind == 0:  # the padding at the end of a block
            offset += room
            continue
        if offset + 7 + length > len(data):
            break  # a chunk the writer has not finished yet
        pending = (b"" if kind in (1, 2) else pending) + data[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def read_finished_wandb_records(path: Path, timeout_s: float = 30.0) -> list:
    """The records once wandb's writer process has written its last one (`exit`): `run.finish()` returns before that
    process has flushed its last block, so a file read at once can lack the run's last records (seen under load)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_wandb_records(path)
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


@pytest.mark.slow
def test_wandb_offline_run_holds_metrics_config_and_files(synthetic_root: Path, tmp_path: Path, monkeypatch, capfd):
    pytest.importorskip("wandb")
    # Not silent (WANDB_SILENT): what wandb prints is what a user sees.
    for name, value in {"WANDB_MODE": "offline", "WANDB_CACHE_DIR": tmp_path / "cache",
                        "WANDB_CONFIG_DIR": tmp_path / "config", "WANDB_DATA_DIR": tmp_path / "data"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    output_dir = tmp_path / "run"
    tiny_run(synthetic_root, output_dir, "logger=wandb", "++tags=[tiny]")
    # Each run file saved said "Symlinked 1 file into the W&B run directory; call wandb.save again ..." (13 lines)
    printed = capfd.readouterr().err
    assert "wandb" in printed and "into the W&B run directory" not in printed
    # Lightning's offline logger sets WANDB_MODE=dryrun for the process; the next run of the process would inherit it.
    assert os.environ["WANDB_MODE"] == "offline"
    [run_folder] = (output_dir / "wandb").glob("offline-run-*")
    records = read_finished_wandb_records(next(run_folder.glob("run-*.wandb")))
    [run] = [record.run for record in records if record.WhichOneof("record_type") == "run"]
    assert (run.project, run.run_group, list(run.tags)) == ("mura", "demo", ["tiny"])
    # An image is logged as nested keys (its series, then the image's fields): its series is the name that counts.
    history = [{item.key or item.nested_key[0]: json.loads(item.value_json) for item in record.history.item}
               for record in records if record.WhichOneof("record_type") == "history"]
    config = {item.key: json.loads(item.value_json)
              for record in records if record.WhichOneof("record_type") == "config" for item in record.config.update}

    validated = [row for row in history if "val/study/kappa" in row]
    history_json = json.loads((output_dir / "history.json").read_text())
    assert [row["val/study/kappa"] for row in validated] == pytest.approx([row["val/study/kappa"] for row in history_json])
    assert all(row["trainer/global_step"] > 0 for row in validated)
    assert (config["data.image_size"], config["trainer.max_epochs"]) == (48, 1)
    # The figures as images (the same study's Grad-CAM after the epoch and at the end in one series), the other
    # files among the run's files, byte for byte.
    images = {key.split("/")[1] for row in history for key in row if key.startswith("gradcam/")}
    assert gallery_parts(sorted(images)) == val_parts(output_dir)
    assert {"curves", "roc", "confusion"} <= {key for row in history for key in row}
    for name in ("metrics.json", "splits.csv", "selection.json"):
        assert (run_folder / "files" / name).read_bytes() == (output_dir / name).read_bytes()


def test_config_parameters_are_flat_dotted_and_never_cut_silently(caplog):
    config = OmegaConf.create({"data": {"image_size": 48, "body_parts": ["XR_WRIST", "XR_HAND"], "root": None},
                               "model": {"optimizer": {"lr": 1e-3}, "scheduler": {}, "note": "x" * 300},
                               "task_name": "train", "run": "${task_name}-1"})
    parameters = config_parameters(config)
    assert parameters == {
        "data.image_size": 48, "data.body_parts": '["XR_WRIST", "XR_HAND"]', "data.root": None,
        "model.optimizer.lr": 1e-3, "model.scheduler": "{}", "model.note": "x" * (MAX_PARAMETER_LENGTH - 1) + "…",
        "task_name": "train", "run": "train-1",
    }
    assert "model.note" in caplog.text


def test_run_names_are_run_folders_and_sweep_jobs_keep_their_sweep():
    assert default_run_name(Path("outputs/train/2026-01-02_10-00-00")) == "2026-01-02_10-00-00"
    assert default_run_name(Path("outputs/train/multirun_2026-01-02_10-00-00/12")) == "multirun_2026-01-02_10-00-00/12"


def test_many_is_csv_tensorboard_and_mlflow(tmp_path: Path):
    cfg = compose_config(["logger=many", f"paths.output_dir={tmp_path}", "++tags=[a,b]"])
    assert set(cfg.logger) == {"csv", "tensorboard", "mlflow"}
    assert cfg.logger.mlflow.experiment_name == "train" and list(cfg.logger.mlflow.tags) == ["a", "b"]
