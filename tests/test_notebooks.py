"""The notebooks run top to bottom on toy data, so that a change that breaks one fails here.

Each runs with papermill, from notebooks/ as Jupyter runs it, in a fresh kernel of the `python3`
kernelspec that ipykernel installs into the environment (jupyter_client starts its `python` as
this interpreter). papermill raises PapermillExecutionError, with the cell's traceback, at the
first cell that fails.
"""

import papermill
import pytest
from conftest import REPO_ROOT

from dataset import CLASS_NAMES

NOTEBOOKS = REPO_ROOT / "notebooks"


def run_notebook(name, output_dir, **parameters):
    """Executes notebooks/<name> with papermill parameters; returns the executed notebook."""
    return papermill.execute_notebook(
        NOTEBOOKS / name,
        output_dir / name,
        parameters=parameters,
        kernel_name="python3",
        cwd=NOTEBOOKS,
        progress_bar=False,
    )


def tagged_cell(notebook, tag):
    (cell,) = [cell for cell in notebook.cells if tag in cell.metadata.get("tags", [])]
    return cell


def text_of(cell):
    """What a cell printed and the plain-text form of what it displayed (tables, figures)."""
    return "\n".join(output.get("text") or output.get("data", {}).get("text/plain", "") for output in cell.outputs)


def shows_figure(cell):
    return any("image/png" in output.get("data", {}) for output in cell.outputs)


def test_data_exploration_runs_on_the_toy_data(toy_dir, tmp_path):
    notebook = run_notebook("data_exploration.ipynb", tmp_path, DATA_DIR=str(toy_dir))
    assert all(name in text_of(tagged_cell(notebook, "class-balance")) for name in CLASS_NAMES)
    assert "total" in text_of(tagged_cell(notebook, "split-summary"))
    assert "lesions with images in more than one subset: 0" in text_of(tagged_cell(notebook, "split-check"))
    assert shows_figure(tagged_cell(notebook, "example-images"))


@pytest.mark.backend
def test_model_comparison_runs_on_the_toy_study(study, tmp_path):
    run_dirs = sorted((study / "runs").iterdir())
    comparison_dir = tmp_path / "comparison"
    notebook = run_notebook(
        "model_comparison.ipynb",
        tmp_path,
        RUN_DIRS=[str(run_dir) for run_dir in run_dirs],
        OUTPUT_DIR=str(comparison_dir),
    )
    for tag in ("metrics-table", "paired-tests"):
        table = text_of(tagged_cell(notebook, tag))
        assert all(run_dir.name in table for run_dir in run_dirs), tag
    assert shows_figure(tagged_cell(notebook, "confusion-matrices"))
    assert shows_figure(tagged_cell(notebook, "training-curves"))
    # Each direction shows its images and their table, or says that no run made that confusion.
    for tag in ("melanoma-called-nevus", "nevus-called-melanoma"):
        assert tagged_cell(notebook, tag).outputs, tag


def test_model_comparison_shows_a_study_s_runs_as_dots_with_their_mean(study, tmp_path):
    (study_dir,) = (study / "studies").iterdir()
    notebook = run_notebook(
        "model_comparison.ipynb", tmp_path, STUDY_DIR=str(study_dir), OUTPUT_DIR=str(tmp_path / "comparison")
    )
    spread = tagged_cell(notebook, "study-spread")
    assert shows_figure(spread)
    for name in ("cnn", "densenet", "vgg16", "vgg16-meta"):
        assert name in text_of(spread) and name in text_of(tagged_cell(notebook, "metrics-table"))
    assert shows_figure(tagged_cell(notebook, "training-curves"))
