from __future__ import annotations

import contextlib
import inspect
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from command_process import run_command
from conftest import compose_config
from mura.app import resolvers
from mura.bench import bench_table, measurement_plan, run_bench
from mura.benchmarking import measurements, startup, step_profile
from mura.data.synthetic import SyntheticConfig, plan_release

TINY_BENCH = ["image_size=32", "workers=0", "data.batch_size=8", "train.steps=1", "fit.batches=1", "fit.warmup=1",
              "infer.steps=1", "train.ours.batch_size=8", "fit.ours.batch_size=8", "infer.ours.batch_size=8"]


TRIES = ["+tries.graph={kind: train, cuda_graph: true}", "+tries.fit_fused={kind: fit, fused_adam: true}"]


def test_bench_writes_every_row_in_the_schema(synthetic_root: Path, tmp_path: Path):
    cfg = compose_config([f"data_root={synthetic_root}", f"paths.output_dir={tmp_path}", f"cache_dir={tmp_path / 'cache'}",
                          *TINY_BENCH, *TRIES, "runs=[data,train,fit,infer]"], config_name="bench")
    result = run_bench(cfg)
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written == result
    assert written["device"].startswith("cpu")
    main = [row for row in written["rows"] if "variant" not in row["config"]]
    assert {(row["kind"], row["recipe"]) for row in main} == {
        (kind, recipe) for kind in ("data", "train", "fit", "infer") for recipe in ("baseline", "ours")}
    # The tries: conf/bench.yaml's three and the fit one ran; CUDA graphs are reported, not run.
    tries = {row["config"]["variant"]: row for row in written["rows"] if "variant" in row["config"]}
    assert set(tries) == {"fused_adam", "evaluate_from_cache", "study_attention", "fit_fused"}
    assert tries["study_attention"]["kind"] == "fit" and tries["study_attention"]["config"]["study_pooling"] == "attention"
    evaluation = tries["evaluate_from_cache"]
    assert evaluation["kind"] == "infer" and evaluation["config"]["end_to_end"] and evaluation["config"]["cache"]
    assert evaluation["config"]["images"] == len(pd.read_csv(synthetic_root / "train_image_paths.csv", header=None))
    assert tries["fused_adam"]["kind"] == "train" and tries["fused_adam"]["config"]["fused_adam"]
    assert tries["fit_fused"]["kind"] == "fit" and tries["fit_fused"]["config"]["fused_adam"]
    assert tries["fit_fused"]["config"]["batch_size"] == 8  # everything else as ours
    assert written["not_measured"] == [{"kind": "train", "recipe": "ours", "variant": "graph", "reason": "CUDA graphs need a CUDA device"}]
    for row in written["rows"]:
        assert set(row) == {"kind", "recipe", "images_per_s", "peak_mem_gib", "config"}
        assert row["images_per_s"] > 0 and row["peak_mem_gib"] is None  # no CUDA here
    fit_ours = next(row for row in written["rows"] if row["kind"] == "fit" and row["recipe"] == "ours")
    assert fit_ours["config"]["cache"] and not fit_ours["config"]["augment_on_device"]  # on a CPU the workers augment
    table = bench_table(result)
    assert "| data" in table and "speed-up" in table and "| fit_fused" in table
    assert "not measured: train/ours/graph: CUDA graphs need a CUDA device" in table


def test_a_failing_measurement_is_reported_and_the_others_still_run(synthetic_root: Path, tmp_path: Path):
    cfg = compose_config([f"data_root={synthetic_root}", f"paths.output_dir={tmp_path}", f"cache_dir={tmp_path / 'cache'}", "runs=[train,infer]",
                          *TINY_BENCH, "train.baseline.batch_size=-1"], config_name="bench")
    result = run_bench(cfg)
    assert sorted((row["kind"], row["recipe"], row["config"].get("variant", "")) for row in result["rows"]) == [
        ("infer", "baseline", ""), ("infer", "ours", ""), ("infer", "ours", "evaluate_from_cache"), ("train", "ours", ""),
        ("train", "ours", "fused_adam")]
    (failed,) = result["not_measured"]
    assert (failed["kind"], failed["recipe"]) == ("train", "baseline") and failed["reason"]
    assert json.loads((tmp_path / "bench.json").read_text()) == result
    # Every measurement's cost is listed, the failed one's too, in the order they ran.
    assert [entry["measurement"] for entry in result["seconds"]] == [
        "train/baseline", "infer/baseline", "train/ours", "infer/ours", "train/ours/fused_adam", "infer/ours/evaluate_from_cache"]
    assert "where the time went, in seconds (setup and cuDNN autotuning included): train/baseline " in bench_table(result)


def test_a_spent_budget_skips_the_measurements_left_and_says_so(synthetic_root: Path, tmp_path: Path):
    cfg = compose_config([f"data_root={synthetic_root}", f"paths.output_dir={tmp_path}", f"cache_dir={tmp_path / 'cache'}",
                          "runs=[train,infer]", *TINY_BENCH, "budget_s=1e-9"], config_name="bench")
    result = run_bench(cfg)
    assert result["rows"] == [] and result["seconds"] == []
    assert [(missing["kind"], missing["recipe"]) for missing in result["not_measured"]] == [
        ("train", "baseline"), ("infer", "baseline"), ("train", "ours"), ("infer", "ours"), ("train", "ours"), ("infer", "ours")]
    assert all(missing["reason"] == "budget_s (1e-09 s) spent before it started" for missing in result["not_measured"])


@pytest.mark.slow
def test_startup_runs_the_real_train_command_and_reports_time_to_first_step_epochs_and_galleries(
        synthetic_root: Path, tmp_path: Path, monkeypatch):
    train_overrides = ["experiment=demo", "data.image_size=32", "data.num_workers=0", "trainer.max_epochs=3",
                       "callbacks.gradcam.every_n_epochs=1", "callbacks.gradcam.studies_per_class=1"]
    overrides = ["startup.overrides=[" + ",".join(f"'{override}'" for override in train_overrides) + "]"]
    # A variant: the same run with one more override, measured on the cache the first one built.
    variant = "+tries.two_epochs={kind: startup, extra_overrides: ['trainer.max_epochs=2']}"
    runs, commands, real_train = [], [], startup._train

    def counted_train(command: list[str], run_dir: Path, timeout_s: float):
        runs.append(run_dir.name)
        commands.append(command)
        if len(runs) == 1:
            # The cache build: the same command, whose start-up is not measured, in a process forked with the imports
            # done (tests/command_process.py); the measured run below starts an interpreter of its own.
            launched = time.time()
            built = run_command("mura.train", [*command, f"hydra.run.dir={run_dir}"], Path.cwd(), timeout=timeout_s)
            assert built.returncode == 0, built.stderr[-3000:]
            return launched, time.time() - launched
        if len(runs) == 2:
            return real_train(command, run_dir, timeout_s)
        # The variant's run: its command is checked below; a third real training would prove nothing more and cost
        # a process start and a fit, so it stands in with the measured run's files, as a run writes them.
        run_dir.mkdir(parents=True)
        for name in ("timings.json", "train.log"):
            (run_dir / name).write_bytes((tmp_path / "startup" / name).read_bytes())
        return time.time(), 0.1

    monkeypatch.setattr(startup, "_train", counted_train)
    cfg = compose_config([f"data_root={synthetic_root}", f"paths.output_dir={tmp_path}", f"cache_dir={tmp_path / 'cache'}",
                          "runs=[startup]", *overrides, variant], config_name="bench")
    result = run_bench(cfg)
    assert result["not_measured"] == []
    row, two_epochs = result["rows"]
    assert row["kind"] == "startup" and "variant" not in row["config"]
    # The cache was built by the unmeasured run, in the bench's cache folder, before the measured one started.
    cache_files = [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]
    assert cache_files and max(path.stat().st_mtime for path in cache_files) < row["config"]["launched"]
    assert row["origin"] == "process start"  # its own process: interpreter start and imports count
    assert 0 < row["first_step_s"] < row["wall_s"]
    # The phases add up by construction (one chain of marks); what can break is a mark out of order
    assert sum(row["to_first_step"].values()) == pytest.approx(row["first_step_s"], abs=0.01)
    assert len(row["to_first_step"]) == 5 and all(seconds >= 0 for seconds in row["to_first_step"].values())
    assert [epoch["epoch"] for epoch in row["epochs"]] == [0, 1, 2]
    assert row["first_epoch_vs_steady"] == pytest.approx(row["first_epoch_train_s"] / row["steady_epoch_train_s"], abs=0.01)
    assert row["first_gallery_s"] > 0 and row["later_gallery_s"] > 0 and row["validation_vs_steady_epoch"] > 0
    assert row["test_vs_steady_epoch"] == pytest.approx(row["after_fit"]["test_s"] / row["steady_epoch_train_s"], abs=0.01)
    # Only the measured runs' timings and logs are kept; their checkpoints and galleries were scratch.
    assert sorted(path.name for path in (tmp_path / "startup").iterdir()) == ["timings.json", "train.log", "two_epochs"]
    assert not list(tmp_path.rglob("*.ckpt"))
    # The variant trained with its extra override, without building the cache again, and kept its files apart.
    assert runs == ["cache_build", "measured", "measured"]
    assert commands[2] == [*commands[1], "trainer.max_epochs=2"]  # the measured run's command, plus its override
    assert two_epochs["config"]["variant"] == "two_epochs" and two_epochs["config"]["extra_overrides"] == ["trainer.max_epochs=2"]
    assert sorted(path.name for path in (tmp_path / "startup" / "two_epochs").iterdir()) == ["timings.json", "train.log"]
    table = bench_table(result)
    assert "process start to first optimizer step" in table and "<= 15" in table
    (variant_header,) = [line for line in table.splitlines() if line.startswith("| two_epochs: mura.train experiment=demo")]
    assert variant_header.split("|")[1].split()[-1] == "trainer.max_epochs=2"
    assert [entry["measurement"] for entry in result["seconds"]] == ["startup/ours", "startup/ours/two_epochs"]
    assert result["seconds"][0]["seconds"] > 0  # the real measurement's cost (the variant's stand-in takes none)


def test_phase_clock_charges_nested_phases_exclusively_and_only_while_recording():
    clock = step_profile.PhaseClock(torch.device("cpu"))
    inner = clock.timed("inner", lambda: time.sleep(0.1))

    def outer_body():
        time.sleep(0.05)
        inner()

    outer = clock.timed("outer", outer_body)
    outer()
    assert dict(clock.seconds) == {}
    clock.recording = True
    outer()
    assert clock.seconds["inner"] == pytest.approx(0.1, abs=0.03)
    assert clock.seconds["outer"] == pytest.approx(0.05, abs=0.03)


def test_profile_splits_a_training_step_into_phases_that_add_up_to_it(synthetic_root: Path, tmp_path: Path):
    cfg = compose_config([f"data_root={synthetic_root}", f"paths.output_dir={tmp_path}", f"cache_dir={tmp_path / 'cache'}",
                          *TINY_BENCH, "runs=[profile]", "profile.batches=2", "profile.warmup=1",
                          "fit.ours.augment_on_device=true"], config_name="bench")
    result = run_bench(cfg)
    assert result["not_measured"] == []
    (row,) = result["rows"]
    phases = row["phases_ms_per_step"]
    assert {"loader wait", "augmentation parameters (host)", "host to device", "augmentation (device)", "forward", "loss", "backward", "zero_grad",
            "optimizer step", "metric store", "self.log", step_profile.OTHER} <= set(phases)
    assert all(milliseconds >= 0 for milliseconds in phases.values())
    assert phases["forward"] > 0 and phases["backward"] > 0
    # The phases partition the timed steps: no time counted twice (nested phases are exclusive), none outside them.
    timed_ms = 1000 * row["config"]["timed_batches"] * cfg.fit.ours.batch_size / row["images_per_s"]
    assert sum(phases.values()) * row["config"]["timed_batches"] == pytest.approx(timed_ms, rel=0.02)
    assert "| forward" in bench_table(result)


@pytest.mark.parametrize("preset", [[], ["bench_preset=gpu"]])
def test_bench_configs_have_images_for_every_timed_batch(preset: list[str]):
    cfg = compose_config(preset, config_name="bench")
    images, _ = plan_release(SyntheticConfig(**OmegaConf.to_container(cfg.synthetic)))
    train_images = sum(spec.relative_path.startswith("train/") for spec in images)
    batches = max(cfg.fit.warmup + cfg.fit.batches, cfg.profile.warmup + cfg.profile.batches)
    assert train_images >= batches * cfg.fit.ours.batch_size


def test_a_mistyped_or_empty_measurement_list_is_an_error_before_anything_runs(tmp_path: Path):
    """runs=[pipeline] used to exit 0 with an empty table, saying it wrote a bench.json it never wrote."""
    from mura.app.errors import ConfigError

    for overrides, message in ((["runs=[pipeline,fit]"], "no measurement called pipeline; the measurements are data, train"),
                               (["runs=[]"], "selects no measurement"),
                               (["runs=fit", "+tries.typo={kind: fitt}"], r"no measurement called fitt \(tries.typo.kind\)")):
        cfg = compose_config([*overrides, f"paths.output_dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}"],
                             config_name="bench")
        with pytest.raises(ConfigError, match=message):
            run_bench(cfg)
    assert list(tmp_path.iterdir()) == []  # no synthetic data made, no bench.json
    single = compose_config(["runs=fit", "~tries"], config_name="bench")  # a single name as well as a list
    assert [(kind, recipe) for kind, recipe, _, _ in measurement_plan(single)] == [("fit", "baseline"), ("fit", "ours")]


def test_the_gpu_check_runs_the_main_table_profile_and_startup_before_the_tries_and_the_startup_variant_last():
    """budget_s may cut the end of a GPU check: what three goals hang on (startup) comes before the tries."""
    plan = measurement_plan(compose_config(["bench_preset=gpu"], config_name="bench"))
    labels = ["/".join(part for part in (kind, recipe, variant) if part) for kind, recipe, variant, _ in plan]
    assert labels[:10] == [f"{kind}/{recipe}" for recipe in ("baseline", "ours") for kind in ("data", "train", "fit", "infer")] + [
        "profile/ours", "startup/ours"]
    variants = [label for label in labels if label.startswith("startup/ours/")]
    assert variants == ["startup/ours/startup_no_autotune"] and labels[-len(variants):] == variants  # last
    assert {label.split("/")[0] for label in labels[10:-len(variants)]} == {"train", "fit", "infer"}  # the tries, between


@contextlib.contextmanager
def cuda_reported_available() -> Iterator[None]:
    """Configs resolve as on a CUDA machine (`${mura.cuda:}` true): what the GPU preset's runs compose to there."""
    OmegaConf.register_new_resolver("mura.cuda", lambda: True, replace=True)
    try:
        yield
    finally:
        OmegaConf.register_new_resolver("mura.cuda", resolvers.cuda_available, replace=True)


def resolved_data(cfg) -> dict:
    """The data settings' values, interpolations resolved; splits_dir is the run folder's (Hydra's), not data."""
    return {key: OmegaConf.select(cfg, f"data.{key}", throw_on_resolution_failure=False)
            for key in cfg.data if key != "splits_dir"}


def test_gpu_preset_names_only_real_settings_and_has_images_for_every_timed_batch():
    """benchmarks/gpu_check.sh runs this preset on a GPU that this suite never sees: catch its mistakes here."""
    cfg = compose_config(["bench_preset=gpu"], config_name="bench")
    assert (cfg.backbone, cfg.image_size) == ("densenet169", 320)
    by_kind = {"train": measurements.measure_train_step, "fit": measurements.measure_fit, "infer": measurements.measure_inference,
               "startup": startup.measure_startup}
    largest_fit_batch = cfg.fit.ours.batch_size
    for name, settings in cfg.tries.items():
        measurement = measurements.measure_evaluation if settings.get("end_to_end") else by_kind[settings.kind]
        assert set(settings) - {"kind", "end_to_end"} <= set(inspect.signature(measurement).parameters), name
        if settings.kind == "fit":
            largest_fit_batch = max(largest_fit_batch, settings.get("batch_size", 0))
    images, _ = plan_release(SyntheticConfig(**OmegaConf.to_container(cfg.synthetic)))
    train_images = sum(spec.relative_path.startswith("train/") for spec in images)
    assert train_images >= (cfg.fit.warmup + cfg.fit.batches) * largest_fit_batch
    # The startup run composes into the shipped all-parts training as it runs on a GPU (cuDNN autotuning on, as
    # shipped), and its variant (run on the same cache) turns autotuning off and changes nothing of the data.
    with cuda_reported_available():
        base = compose_config(list(cfg.startup.overrides))
        (variant,) = [settings for settings in cfg.tries.values() if settings.kind == "startup"]
        varied = compose_config([*cfg.startup.overrides, *variant.extra_overrides])
        assert base.data.body_parts == "all" and base.callbacks.gradcam.every_n_epochs == 1
        assert base.trainer.benchmark is True and varied.trainer.benchmark is False
        assert resolved_data(varied) == resolved_data(base)  # resolved: data.seed, data.channels are interpolations


def test_share_times_one_training_alone_then_two_at_once_on_a_built_cache(synthetic_root: Path, tmp_path: Path, monkeypatch):
    """runs=[share]: the cache is built first (not timed), then one job alone, then two started together; the row's
    ratios are of those walls. The jobs are stand-ins that take 0.2 s alone and 0.3 s together."""
    started: list[list[list[str]]] = []

    def stand_in(overrides: list[list[str]], run_dirs: list[Path], timeout_s: float) -> None:
        started.append(overrides)
        assert len({str(run_dir) for run_dir in run_dirs}) == len(run_dirs)  # each job its own run folder
        time.sleep(0.2 if len(overrides) == 1 else 0.3)

    monkeypatch.setattr(startup, "_train_together", stand_in)
    cfg = compose_config([f"data_root={synthetic_root}", f"paths.output_dir={tmp_path}", "runs=[share]"], config_name="bench")
    result = run_bench(cfg)
    (row,) = result["rows"]
    cache_build, alone, together = started
    assert "++trainer.limit_train_batches=1" in cache_build[0] and len(alone) == 1 and together == [alone[0], alone[0]]
    assert cache_build[0].count("~callbacks.gradcam") == 1  # Hydra refuses a second deletion (the real run failed so)
    assert alone[0][:len(cfg.share.overrides)] == list(cfg.share.overrides)
    assert row["two_at_once_vs_alone"] == pytest.approx(row["two_at_once_s"] / row["alone_s"], abs=0.2)
    assert row["two_at_once_vs_one_after_the_other"] == pytest.approx(row["two_at_once_vs_alone"] / 2, abs=0.01)
    table = bench_table(result)
    assert "two at once / the two one after the other" in table and "<= 1.5 ideally" in table
