"""One run's whole flow: train it (or continue it), then evaluate it.

from pipeline import train_and_evaluate
run = train_and_evaluate(load_config("densenet", "configs/tiny.yaml", {"limit": 200}))
"""

import dataclasses
import sys
from pathlib import Path

import evaluation
import inference
from common.errors import DataError
from common.files import new_folder, write_json
from common.run_folder import (
    METRICS_FILENAME,
    MODEL_FILENAME,
    PREDICTIONS_FILENAME,
    REPORT_FILENAME,
    VAL_PREDICTIONS_FILENAME,
)
from evaluation.catalogue import CONSOLE, metrics_shown
from evaluation.robustness import SUBSETS
from evaluation.run_files import read_run_files
from pipeline.robustness import score_run_robustness
from training import prepare_run_data, resume_run, run_config, train_run
from training.tracking import log_finished_run

VALIDATION_METRICS_FILENAME = "validation_metrics.json"


def evaluate_trained_run(run):
    """Predicts the run's test subset with the kept model, then writes the gallery, metrics, plots and report.

    The gallery is optional: where it fails (a backbone whose feature map Grad-CAM cannot find), a
    warning says so and the evaluation is written all the same.

    Returns:
        The test metrics (`metrics.json`).
    """
    # One load of the model serves both subsets and the gallery.
    predictor = evaluation.Predictor.load(run.run_dir)
    options = {"batch_size": run.config.batch_size, "predictor": predictor}
    evaluation.predict_subset(run.run_dir, run.data, **options)
    # The temperature, operating points and conformal sets are fitted on these; a study's
    # out-of-fold metrics pool every fold run's validation fold.
    evaluation.predict_subset(run.run_dir, run.data, subset="val", **options)
    if run.config.robustness:
        # Before the evaluation, whose metrics and report show it.
        score_run_robustness(run.run_dir, SUBSETS, predictor=predictor, data=run.data, reevaluate=False)
    try:
        # Before the evaluation, whose report shows it.
        inference.write_gallery(run.run_dir, run.data, predictor)
    except Exception as error:
        reason = f"{type(error).__name__}: {error}".strip().splitlines()[0]
        print(f"warning: the Grad-CAM gallery failed ({reason}); the report goes without it", file=sys.stderr)
    metrics = evaluation.evaluate_run(run.run_dir)
    log_finished_run(run.run_dir, run.config, run.study)
    shown = ", ".join(f"{metric.name} {shown_value(metrics[metric.key])}" for metric in metrics_shown(CONSOLE))
    print(f"{run.run_dir.name}: test {shown}; report: {run.run_dir / REPORT_FILENAME}")
    return metrics


def shown_value(value):
    """A score as the console prints it; None (a metric the test subset cannot define, as melanoma
    sensitivity without melanomas) as "n/a"."""
    return "n/a" if value is None else f"{value:.3f}"


def train_and_evaluate(config):
    """Trains `config` in a new run folder and evaluates it; returns the `TrainedRun`."""
    run = train_run(config)
    evaluate_trained_run(run)
    return run


def resume_and_evaluate(run_dir, overrides=None):
    """Continues an interrupted run (`training.resume_run`) and evaluates it; returns the `TrainedRun`.

    Raises:
        DataError: the run is finished already (it has its metrics).
    """
    if (run_dir / METRICS_FILENAME).is_file():
        raise DataError(
            f"{run_dir}: finished (trained and evaluated), nothing to resume; `python main.py evaluate {run_dir}` recomputes its evaluation"
        )
    run = resume_run(run_dir, overrides)
    evaluate_trained_run(run)
    return run


def evaluate_at_image_size(run_dir, image_size, cache_dir=None):
    """Predicts a run's validation and test subsets at another image size than it trained at
    (test-time resolution, `networks.resolution`) into a new `size-<N>px/` folder of the run:
    `val_predictions.csv`, `validation_metrics.json`, and the test subset's predictions,
    metrics, plots and report. Choose the size on validation.

    Returns:
        (validation metrics, test metrics), without bootstrap intervals for validation.
    """
    run_dir = Path(run_dir)
    config = run_config(run_dir, {"cache_dir": cache_dir and str(cache_dir)})
    data = prepare_run_data(dataclasses.replace(config, image_size=image_size))
    predictor = evaluation.Predictor.load(run_dir, image_size=image_size)
    folder = new_folder(run_dir / f"size-{image_size}px")
    scores = {}
    for subset in ("val", "test"):
        rows, cache_rows, labels = data.subset(subset)
        probabilities = predictor.predict(
            data.cache.images, rows, rows=cache_rows, batch_size=config.batch_size, verbose="auto"
        )
        name = VAL_PREDICTIONS_FILENAME if subset == "val" else PREDICTIONS_FILENAME
        evaluation.write_predictions(
            folder / name, evaluation.predictions_frame(rows["image_id"].tolist(), labels, probabilities)
        )
        if subset == "val":
            scores[subset] = evaluation.compute_metrics(labels, probabilities, bootstrap_draws=0)
            write_json(folder / VALIDATION_METRICS_FILENAME, scores[subset])
        else:
            scores[subset] = evaluation.write_evaluation(
                folder,
                labels,
                probabilities,
                title=f"Evaluation of {run_dir.name} at {image_size} px (trained at {config.image_size} px)",
                test_set=f"the {len(labels):,} test images of the run's split, decoded at {image_size} px",
                run=read_run_files(run_dir),
            )
    print(
        f"{run_dir.name} at {image_size} px (trained at {config.image_size}): validation balanced accuracy "
        f"{scores['val']['balanced_accuracy']:.3f}, test {scores['test']['balanced_accuracy']:.3f}; in {folder}"
    )
    return scores["val"], scores["test"]


def reevaluate_run(run_dir, tta=False, cache_dir=None):
    """Writes a run's evaluation again from its predictions; with `tta`, also predicts its test
    subset with test-time augmentation (8 views) and evaluates that into its tta/ folder.

    A run with its model but no `val_predictions.csv` (trained before every run predicted its
    validation subset) gets them first: its temperature and conformal sets are fitted on them.

    Returns:
        (the metrics, the TTA metrics with their "folder", or None without `tta`).
    """
    run_dir = Path(run_dir)
    predict_val = not (run_dir / VAL_PREDICTIONS_FILENAME).is_file() and (run_dir / MODEL_FILENAME).is_file()
    config = data = None
    if predict_val or tta:
        config = run_config(run_dir, {"cache_dir": cache_dir and str(cache_dir)})
        data = prepare_run_data(config)
    if predict_val:
        evaluation.predict_subset(run_dir, data, batch_size=config.batch_size, subset="val")
    metrics = evaluation.evaluate_run(run_dir)
    if not tta:
        return metrics, None
    predictions = evaluation.predict_subset(run_dir, data, batch_size=config.batch_size, tta=True)
    return metrics, {**evaluation.evaluate_tta(run_dir, predictions.parent), "folder": predictions.parent}
