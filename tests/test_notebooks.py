"""Each notebook runs headless on a tiny run, so they cannot rot."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_are_committed_without_outputs():
    assert [path.name for path in NOTEBOOKS] == ["01_data.ipynb", "02_results.ipynb", "03_explainability.ipynb"]
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path: Path, trained_run, synthetic_root: Path, monkeypatch):
    run_dir, _ = trained_run
    monkeypatch.setenv("MURA_DATA_ROOT", str(synthetic_root))
    monkeypatch.setenv("MURA_RUN_DIR", str(run_dir))
    monkeypatch.setenv("MURA_EVAL_DIR", str(run_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [output for cell in notebook.cells for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    assert not errors
