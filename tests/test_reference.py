"""The reference study in results/reference/ is complete, its summary is what its runs' predictions
give, and the README quotes it as it is."""

import json
import re

import pytest
from conftest import REPO_ROOT

from common.study_folder import finished_runs, read_study
from evaluation.study import write_summary

REFERENCE = REPO_ROOT / "results" / "reference"
CONFIGURATIONS = ["cnn", "densenet", "vgg16_bn", "vgg16_bn-meta", "efficientnet_lite0", "efficientnet_lite0-meta"]
FOLDS = 3
RUN_FILES = (
    "config.yaml",
    "environment.json",
    "history.csv",
    "training.json",
    "predictions.csv",
    "val_predictions.csv",
    "metrics.json",
)


def test_reference_is_a_finished_study_of_six_configurations_by_three_folds_without_weights():
    study = read_study(REFERENCE)
    assert [(run["configuration"], run["fold"], run["finished"]) for run in study["runs"]] == [
        (configuration, fold, True) for configuration in CONFIGURATIONS for fold in range(FOLDS)
    ]
    runs = sorted(path for path in (REFERENCE / "runs").iterdir() if path.is_dir())
    assert sorted(run["run_dir"] for run in study["runs"]) == [f"runs/{run.name}" for run in runs]
    for run in runs:
        assert [name for name in RUN_FILES if not (run / name).is_file()] == [], run.name
        assert list(run.rglob("*.keras")) == [], run.name


@pytest.fixture(scope="module")
def remade_summary(tmp_path_factory):
    """The summary written again from the committed runs' predictions, as summary.json holds it."""
    summary = write_summary(
        finished_runs(REFERENCE),
        tmp_path_factory.mktemp("reference") / "summary",
        f"Study {REFERENCE.name}",
        verbose=False,
    )
    return json.loads(json.dumps(summary))


def test_reference_summary_is_recomputed_from_its_runs(remade_summary):
    committed = json.loads((REFERENCE / "summary" / "summary.json").read_text())
    assert list(committed["configurations"]) == CONFIGURATIONS
    for label, configuration in committed["configurations"].items():
        for key in ("spread", "ensemble", "out_of_fold"):
            assert remade_summary["configurations"][label][key] == configuration[key], (label, key)
    assert [pair["paired_over_runs"] for pair in remade_summary["pairs"]] == [
        pair["paired_over_runs"] for pair in committed["pairs"]
    ]


def test_readme_quotes_the_summary_as_it_is():
    """The README's Results section links the full tables and quotes only numbers they hold."""
    summary_dir = REFERENCE / "summary"
    tables = (summary_dir / "summary.md").read_text() + (summary_dir / "comparison" / "comparison.md").read_text()
    readme = (REPO_ROOT / "README.md").read_text()
    results = readme.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    assert "(results/reference/summary/summary.md)" in results and "(results/reference/summary/spread.png)" in results
    # Metrics are printed with three decimals; the section's other numbers (versions, times) have fewer.
    quoted = re.findall(r"[+-]?\d\.\d{3}\b", results)
    assert len(quoted) >= 5
    assert [number for number in quoted if number not in tables] == []
