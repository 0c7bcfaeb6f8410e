"""Each notebook runs in a Jupyter kernel on a tiny run, so they cannot rot, and every cell that draws shows its
figure. No MPLBACKEND here: the kernel keeps Jupyter's inline backend, unless library code chooses one
(`matplotlib.use("Agg")` on import), which turns inline plotting off: the pyplot probe cell run after each notebook
catches that even where the notebook's own cells `display` bare Figures (which show under any backend)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
FIGURE = "# figure"  # notebooks/make_notebooks.py starts every cell that draws with this line
FIGURE_CELLS = {"01_data": 2, "02_results": 1, "03_explainability": 1}  # so a marker cannot silently go missing
PYPLOT_PROBE = FIGURE + "\nimport matplotlib.pyplot as plt\n\nplt.plot([0, 1], [0, 1]);"  # after the notebook's cells


def figure_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.startswith(FIGURE)]


def test_notebooks_are_committed_without_outputs():
    assert [path.name for path in NOTEBOOKS] == ["01_data.ipynb", "02_results.ipynb", "03_explainability.ipynb"]
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), path.name
        assert len(figure_cells(notebook)) == FIGURE_CELLS[path.stem], path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_and_shows_its_figures(path: Path, trained_run, synthetic_root: Path, monkeypatch):
    run_dir, _ = trained_run
    monkeypatch.setenv("MURA_ROOT", str(synthetic_root))
    monkeypatch.setenv("MURA_RUN_DIR", str(run_dir))
    monkeypatch.setenv("MURA_EVAL_DIR", str(run_dir))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel picks its own (inline) backend, as in Jupyter
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(new_code_cell(PYPLOT_PROBE))
    # A cell that raises fails the test here: execute() raises CellExecutionError with the cell and its traceback.
    NotebookClient(notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    cells = figure_cells(notebook)
    assert len(cells) == FIGURE_CELLS[path.stem] + 1
    for cell in cells:
        images = [output for output in cell.outputs if "image/png" in output.get("data", {})]
        assert images, f"{path.name}: this cell drew no image:\n{cell.source}"
