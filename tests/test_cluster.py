"""Sweeps on a cluster through hydra-submitit-launcher: a real two-job sweep through submitit's local executor, and
the SLURM settings of conf/hydra/launcher/slurm.yaml reaching the sbatch script submitit writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import run_main_in_process


@pytest.mark.slow
def test_a_two_job_sweep_through_submitit_writes_both_jobs_metrics(synthetic_root: Path, tmp_path: Path, monkeypatch,
                                                                  capfd):
    sweep_dir = tmp_path / "sweep"
    monkeypatch.chdir(tmp_path)
    # The sweep's own main in this process (it only submits and waits); each job runs in a process of its own
    code = run_main_in_process("train", [
        "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "experiment=demo",
        f"data.root={synthetic_root}", "trainer.fast_dev_run=true", "data.num_workers=0", "data.image_size=40",
        "callbacks=none", "seed=1,2", f"hydra.sweep.dir={sweep_dir}"])
    printed = capfd.readouterr()
    assert code == 0, printed.out[-3000:] + printed.err[-3000:]
    assert "Submitit 'local' sweep output dir" in printed.err
    for job, seed in (("0", 1), ("1", 2)):
        assert f"seed={seed}" in (sweep_dir / job / ".hydra" / "overrides.yaml").read_text()
        assert (sweep_dir / job / "metrics.json").is_file() and (sweep_dir / job / "config.yaml").is_file()
    assert len(list((sweep_dir / ".submitit").glob("*/*_log.out"))) == 2  # each job ran in its own submitit process


@pytest.mark.slow
def test_one_override_sends_a_sweep_to_slurm_with_our_settings(synthetic_root: Path, tmp_path: Path, monkeypatch, capfd):
    """No cluster here: stand-ins for srun and sbatch; sbatch keeps the script it is given and refuses the job."""
    bin_dir, script = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {script}\necho "sbatch: no cluster here" >&2\nexit 1\n')
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    # The command's own main, in this process: only the submission is tested (a second interpreter adds its start-up)
    code = run_main_in_process("train", [
        "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=radiology",
        "hydra.launcher.qos=high", "+hydra.launcher.additional_parameters.mail-type=END", "experiment=all_parts",
        f"data.root={synthetic_root}", "seed=1,2,3", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    printed = capfd.readouterr()
    assert code != 0 and "no cluster here" in printed.out + printed.err
    sbatch = set(script.read_text().splitlines())
    expected = ["--partition=gpu", "--account=radiology", "--qos=high", "--mail-type=END", "--gpus-per-node=1",
                "--ntasks-per-node=1", "--cpus-per-task=9", "--mem=64GB", "--time=720", "--nodes=1", "--array=0-2%3",
                "--job-name=train"]
    assert [option for option in expected if f"#SBATCH {option}" not in sbatch] == []
