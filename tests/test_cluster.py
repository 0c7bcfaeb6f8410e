"""Sweeps on a cluster through hydra-submitit-launcher: a real two-job sweep through submitit's local executor, and
the SLURM settings of conf/hydra/launcher/slurm.yaml reaching the sbatch script submitit writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def train_command(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mura.train", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.slow
def test_a_two_job_sweep_through_submitit_writes_both_jobs_metrics(synthetic_root: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    result = train_command(
        ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "experiment=demo",
         f"data.root={synthetic_root}", "trainer.fast_dev_run=true", "data.num_workers=0", "data.image_size=40",
         "callbacks=none", "seed=1,2", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in result.stderr
    for job, seed in (("0", 1), ("1", 2)):
        assert f"seed={seed}" in (sweep_dir / job / ".hydra" / "overrides.yaml").read_text()
        assert (sweep_dir / job / "metrics.json").is_file() and (sweep_dir / job / "config.yaml").is_file()
    assert len(list((sweep_dir / ".submitit").glob("*/*_log.out"))) == 2  # each job ran in its own submitit process


@pytest.mark.slow
def test_one_override_sends_a_sweep_to_slurm_with_our_settings(synthetic_root: Path, tmp_path: Path):
    """No cluster here: stand-ins for srun and sbatch; sbatch keeps the script it is given and refuses the job."""
    bin_dir, script = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {script}\necho "sbatch: no cluster here" >&2\nexit 1\n')
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = train_command(
        ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=radiology",
         "hydra.launcher.qos=high", "+hydra.launcher.additional_parameters.mail-type=END", "experiment=all_parts",
         f"data.root={synthetic_root}", "seed=1,2,3", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, env=env,
    )
    assert result.returncode != 0 and "no cluster here" in result.stdout + result.stderr
    sbatch = set(script.read_text().splitlines())
    expected = ["--partition=gpu", "--account=radiology", "--qos=high", "--mail-type=END", "--gpus-per-node=1",
                "--ntasks-per-node=1", "--cpus-per-task=9", "--mem=64GB", "--time=720", "--nodes=1", "--array=0-2%3",
                "--job-name=train"]
    assert [option for option in expected if f"#SBATCH {option}" not in sbatch] == []
