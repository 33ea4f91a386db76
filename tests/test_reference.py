"""The reference study in results/reference/ is complete, and the README quotes it as it is."""

import json

from conftest import REPO_ROOT

REFERENCE = REPO_ROOT / "results" / "reference"
STUDY_RUNS = ["cnn", "densenet", "vgg16", "vgg16-meta"]
RUN_FILES = ("config.yaml", "history.csv", "training.json", "predictions.csv", "metrics.json", "report.md")


def test_reference_holds_the_four_runs_without_weights():
    runs = sorted(path for path in (REFERENCE / "runs").iterdir() if path.is_dir())
    assert [run.name for run in runs] == STUDY_RUNS
    for run in runs:
        assert [name for name in RUN_FILES if not (run / name).is_file()] == [], run.name
        assert list(run.glob("*.keras")) == [], run.name
    comparison = json.loads((REFERENCE / "comparison" / "comparison.json").read_text())
    assert [run["label"] for run in comparison["runs"]] == STUDY_RUNS


def test_readme_results_table_is_the_comparisons():
    comparison = (REFERENCE / "comparison" / "comparison.md").read_text()
    runs_table = comparison.split("## Runs", 1)[1].split("##", 1)[0].strip()
    assert runs_table.count("\n") == len(STUDY_RUNS) + 1
    assert runs_table in (REPO_ROOT / "README.md").read_text()
