"""The evaluation stage: a trained run's test predictions -> metrics, plots, reports, comparisons.

    from evaluation import compare_runs, evaluate_external, evaluate_run
    evaluate_run("results/runs/20250101-120000-densenet")        # metrics.json, plots, report.md
    compare_runs([run_a, run_b], "results/comparison")              # comparison.md/.json/.png
    evaluate_external(run_a, "data/isic2018-test", "data/isic2018-test/GroundTruth.csv")

Everything but `evaluation.predictor` (`Predictor`, `predict_subset`) and `evaluate_external`
works from the files in the run folder (`predictions.csv` first of all), never from `training`;
those run the run's model, through `Predictor`, the one class that does.
"""

from evaluation.compare import compare_runs
from evaluation.external import evaluate_external
from evaluation.labels import read_labels
from evaluation.metrics import compute_metrics, expected_calibration_error
from evaluation.predictions import predictions_frame, read_predictions, write_predictions
from evaluation.predictor import Predictor, predict_subset
from evaluation.report import evaluate_run, evaluate_tta, write_evaluation
from evaluation.study import compare_studies, summarize_study

__all__ = [
    "Predictor",
    "compare_runs",
    "compare_studies",
    "compute_metrics",
    "evaluate_external",
    "evaluate_run",
    "evaluate_tta",
    "expected_calibration_error",
    "predict_subset",
    "predictions_frame",
    "read_labels",
    "read_predictions",
    "summarize_study",
    "write_evaluation",
    "write_predictions",
]
