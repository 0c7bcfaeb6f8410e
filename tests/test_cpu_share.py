"""Each job's math threads are its share of the cores among the mura jobs on them (mura.app.cpu_share)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mura.app.cpu_share import CpuShare, join_cpu_share, process_start
from mura.app.errors import ConfigError


@pytest.fixture
def other_job():
    """A live process standing for another mura job: its registry entry names its pid."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr("mura.app.cpu_share.usable_cores", lambda: {0, 1, 2, 3})
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_job_alone_takes_every_core_and_shares_them_with_a_job_started_later(tmp_path: Path, four_cores, other_job):
    share = CpuShare("auto", registry=tmp_path)
    share.join()
    assert share.apply() == 4 and torch.get_num_threads() == 4  # alone: torch's default, a thread per core
    (tmp_path / str(other_job)).write_text(f"{process_start(other_job)}\n2,3,4,5")  # another job on two of our cores
    assert share.apply() == 2 and torch.get_num_threads() == 2
    (tmp_path / str(other_job)).write_text(f"{process_start(other_job)}\n4,5,6,7")  # pinned elsewhere: shares nothing
    assert share.apply() == 4
    (tmp_path / str(other_job)).write_text("1\n0,1,2,3")  # its pid, reused by another process than the job it named
    assert share.apply() == 4 and not (tmp_path / str(other_job)).exists()
    (tmp_path / str(other_job)).write_text(f"{process_start(other_job)}\n0,1,2,3")
    assert share.apply() == 2
    share.leave()
    assert not share.entry.exists()


def test_a_job_that_ended_gives_its_share_back_and_its_entry_goes(tmp_path: Path, four_cores):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / finished.stdout.strip()).write_text("\n0,1,2,3")  # a killed job's leftover entry
    share = CpuShare("auto", registry=tmp_path)
    share.join()
    assert share.apply() == 4
    assert sorted(path.name for path in tmp_path.iterdir()) == [share.entry.name]


def test_the_setting_and_the_environment_are_obeyed(tmp_path: Path, four_cores, monkeypatch, other_job):
    (tmp_path / str(other_job)).write_text(f"{process_start(other_job)}\n0,1,2,3")
    assert CpuShare(3, registry=tmp_path).apply() == 3  # cpu_threads=3: as given, whoever shares the cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a user's or a launcher's cap for the process tree
    assert CpuShare("auto", registry=tmp_path).apply() == 1
    with pytest.raises(ConfigError, match="cpu_threads must be auto or a number"):
        CpuShare("many", registry=tmp_path)
    with pytest.raises(ConfigError, match="cpu_threads"):
        CpuShare(0, registry=tmp_path)


def test_each_job_of_a_sequential_sweep_takes_its_own_setting(tmp_path: Path, four_cores, monkeypatch):
    """The jobs of a basic-launcher sweep (-m cpu_threads=1,3) run one after the other in one process."""
    monkeypatch.setenv("MURA_JOBS_DIR", str(tmp_path))
    monkeypatch.setattr("mura.app.cpu_share._current", None)
    assert join_cpu_share(1).threads == 1
    assert join_cpu_share(3).threads == 3 and torch.get_num_threads() == 3
    assert join_cpu_share("auto").threads == 4  # alone in its registry
    with pytest.raises(ConfigError, match="cpu_threads"):
        join_cpu_share("two")


def test_a_registry_that_is_not_this_users_own_folder_is_not_used(tmp_path: Path, four_cores):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    share = CpuShare("auto", registry=tmp_path / "link")
    share.join()
    assert not list(target.iterdir()) and share.apply() == 4
