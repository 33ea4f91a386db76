"""A run's evaluation: `metrics.json`, the plots and `report.md`, written into its folder.

    from evaluation import evaluate_run
    metrics = evaluate_run("results/runs/20250101-120000-densenet")

`report.md` reads on GitHub as it is: the configuration in brief, the warnings of the training
diagnostics, the headline metrics with their bootstrap intervals, a per-class table, the plots, the
gallery of confident predictions with their Grad-CAM overlays (when `inference.gallery` has written
one), and the images per class and subset.
"""

import json
from pathlib import Path

import pandas as pd

from common.files import write_json, write_text
from common.run_folder import (
    CONFIG_FILENAME,
    GALLERY_DIR,
    GALLERY_FILENAME,
    METRICS_FILENAME,
    PREDICTIONS_FILENAME,
    REPORT_FILENAME,
)
from dataset.metadata import CLASS_DESCRIPTIONS, CLASS_NAMES
from dataset.split import split_summary
from evaluation.catalogue import REPORT, metrics_shown
from evaluation.clinical import ClinicalInputs, clinical_sections, test_metadata, write_clinical
from evaluation.markdown import MISSING, format_duration, format_interval, format_value, markdown_table
from evaluation.metrics import BOOTSTRAP_DRAWS, INTERVAL_LEVEL, compute_metrics
from evaluation.plots import plot_confusion_matrix, plot_per_class, plot_roc_curves, plot_training_curves
from evaluation.predictions import read_predictions
from evaluation.robustness import robustness_metrics, robustness_section
from evaluation.run_files import read_run_files


def evaluate_tta(run_dir, tta_dir, *, bootstrap_draws=BOOTSTRAP_DRAWS, seed=0):
    """Evaluates a run's test-time-augmented predictions (`tta_dir/predictions.csv`) in `tta_dir`.

    The same metrics, plots and report as `evaluate_run` (without the training curves), kept
    beside the run's plain evaluation, never in its place.

    Returns:
        The metrics (the content of `tta_dir/metrics.json`).
    """
    run = read_run_files(run_dir)
    _, y_true, probabilities = read_predictions(Path(tta_dir) / PREDICTIONS_FILENAME)
    return write_evaluation(
        tta_dir,
        y_true,
        probabilities,
        title=f"Evaluation of {run.name} with test-time augmentation",
        test_set=f"the {len(y_true):,} test images of the run's split, each predicted as the mean of its eight rotations and reflections",
        run=run,
        bootstrap_draws=bootstrap_draws,
        seed=seed,
    )


def evaluate_run(run_dir, *, bootstrap_draws=BOOTSTRAP_DRAWS, seed=0):
    """Evaluates a trained run from its `predictions.csv`, writing the results into its folder.

    Writes `metrics.json`, `confusion_matrix.png`, `per_class.png`, `roc_curves.png`,
    `training_curves.png` (when `history.csv` is there) and `report.md`.

    Args:
        run_dir: the run folder (`results/runs/<timestamp>-<model>[-meta]`).
        bootstrap_draws: resamples of the test images for the confidence intervals.
        seed: fixes the resamples.

    Returns:
        The metrics (the content of `metrics.json`).

    Raises:
        DataError: the folder or its `predictions.csv` is missing, or a file in it is malformed.
    """
    run = read_run_files(run_dir)
    run_dir = Path(run_dir)
    frame, y_true, probabilities = read_predictions(run_dir / PREDICTIONS_FILENAME)
    data = None
    if run.split is not None:
        data = ("Images per class in each subset of the run's split:", split_summary(run.split))
    image_ids = frame["image_id"].tolist()
    return write_evaluation(
        run_dir,
        y_true,
        probabilities,
        title=f"Evaluation of {run.name}",
        test_set=f"the {len(y_true):,} test images of the run's split",
        run=run,
        history=run.history,
        data=data,
        bootstrap_draws=bootstrap_draws,
        seed=seed,
        clinical=ClinicalInputs.for_run(run_dir, image_ids, test_metadata(image_ids, run.config.get("data_dir"))),
    )


def write_evaluation(
    output_dir,
    y_true,
    probabilities,
    *,
    title,
    test_set,
    run,
    history=None,
    data=None,
    bootstrap_draws=BOOTSTRAP_DRAWS,
    seed=0,
    clinical=None,
):
    """Computes the metrics and writes `metrics.json`, the plots and `report.md` into a folder.

    Args:
        output_dir: where to write; `predictions.csv` is expected there already.
        y_true: (n,) true class indices.
        probabilities: (n, 7) predicted probabilities.
        title: the report's heading.
        test_set: what the images are, completing "Evaluated on ...".
        run: the evaluated run's `RunFiles`, for the configuration section.
        history: the training history to plot, or None for no training curves.
        data: (caption, table) of images per class, shown under "Data"; or None.
        bootstrap_draws: resamples of the test images for the confidence intervals.
        seed: fixes the resamples.
        clinical: the `ClinicalInputs` of the clinical evaluation (`metrics["clinical"]` and its
            sections), or None for none.

    Returns:
        The metrics.
    """
    output_dir = Path(output_dir)
    metrics = compute_metrics(y_true, probabilities, bootstrap_draws=bootstrap_draws, seed=seed) | robustness_metrics(
        output_dir
    )
    clinical_plots = {}
    if clinical is not None:
        metrics["clinical"], clinical_plots = write_clinical(
            output_dir, y_true, probabilities, clinical, bootstrap_draws=bootstrap_draws, seed=seed
        )
    write_json(output_dir / METRICS_FILENAME, metrics)
    plots = {
        "Confusion matrix": plot_confusion_matrix(metrics["confusion_matrix"], output_dir / "confusion_matrix.png"),
        "Precision and recall per class": plot_per_class(metrics["per_class"], output_dir / "per_class.png"),
        "ROC curves": plot_roc_curves(y_true, probabilities, output_dir / "roc_curves.png"),
    }
    if history is not None:
        plots["Training curves"] = plot_training_curves(
            history,
            output_dir / "training_curves.png",
            best_epoch=run.training.get("best_epoch"),
            stage_boundaries=run.training.get("stage_boundaries", ()),
        )
    write_text(
        output_dir / REPORT_FILENAME,
        render_report(
            metrics,
            title=title,
            test_set=test_set,
            run=run,
            plots=plots,
            data=data,
            output_dir=output_dir,
            clinical_plots=clinical_plots,
        ),
    )
    return metrics


def render_report(metrics, *, title, test_set, run, plots, data, output_dir, clinical_plots=None):
    """The markdown of `report.md`; every link is to a file in `output_dir`, relative to it."""
    files = [
        name for name in (METRICS_FILENAME, PREDICTIONS_FILENAME, CONFIG_FILENAME) if (output_dir / name).is_file()
    ]
    sections = [f"# {title}", f"Evaluated on {test_set}. Files: {', '.join(f'[{name}]({name})' for name in files)}."]
    configuration = configuration_rows(run.config, run.training)
    if configuration:
        sections += ["## Configuration", markdown_table(("setting", "value"), configuration, align="ll")]
    if "diagnostics" in run.training:
        sections += ["## Training diagnostics", diagnostics_list(run.training["diagnostics"])]
    sections += ["## Metrics", headline_table(metrics), metric_notes(metrics)]
    sections += ["## Per class", per_class_table(metrics), robustness_section(output_dir)]
    sections += ["## Plots"] + [f"### {caption}\n\n![{caption}]({path.name})" for caption, path in plots.items()]
    if "clinical" in metrics:
        sections += clinical_sections(metrics["clinical"], clinical_plots or {})
    gallery_path = output_dir / GALLERY_DIR / GALLERY_FILENAME
    if gallery_path.is_file():
        sections += ["## Gallery", gallery_table(json.loads(gallery_path.read_text()))]
    if data is not None:
        caption, table = data
        sections += ["## Data", caption, frame_table(table)]
    return "\n\n".join(section for section in sections if section) + "\n"


def diagnostics_list(warnings):
    """The warnings `training.diagnostics` raised during training, each at the epoch it first fired."""
    if not warnings:
        return "None of the checks fired (stalled loss, overfitting, chance-level validation, waiting for data)."
    return "\n".join(f"- Epoch {warning['epoch']}: {warning['message']}" for warning in warnings)


def gallery_table(entries):
    """For each class, its most confidently correct and wrong test image, with Grad-CAM overlays."""
    cells = {(entry["class"], entry["kind"]): entry for entry in entries}

    def cell(name, kind):
        entry = cells.get((name, kind))
        if entry is None:
            return MISSING
        return f"![{entry['image_id']}]({entry['file']})<br>{entry['image_id']}: {entry['pred']} {entry['probability']:.2f}"

    rows = [(name, cell(name, "correct"), cell(name, "wrong")) for name in CLASS_NAMES]
    note = (
        "For each class, the test image predicted as it with the highest probability, and the image of "
        "it predicted as another class with the highest probability; the overlay is the Grad-CAM of "
        "the predicted class (red: where its evidence lies)."
    )
    return (
        note + "\n\n" + markdown_table(("class", "most confident correct", "most confident wrong"), rows, align="lll")
    )


def configuration_rows(config, training):
    """(setting, value) rows of the run's configuration, leaving out what the run did not record."""
    size = config.get("image_size")
    metadata = config.get("metadata")
    rows = (
        ("model", config.get("model")),
        ("metadata head (age, sex, site)", None if metadata is None else ("yes" if metadata else "no")),
        ("image size", f"{size} × {size} px" if size else None),
        ("epochs run / kept epoch", epochs_summary(training)),
        ("loss", config.get("loss")),
        ("class balancing", config.get("balance")),
        ("seed", config.get("seed")),
        ("wall time", format_duration(training.get("wall_time_s"))),
        ("parameters", parameter_count(training)),
        *(
            (f"stage {stage['stage']} (epochs {stage_epochs(stage)})", stage["trains"])
            for stage in training.get("stages") or ()
            if len(training["stages"]) > 1
        ),
    )
    return [(name, str(value)) for name, value in rows if value is not None]


def stage_epochs(stage):
    return "none" if not stage.get("epochs") else "{}–{}".format(*stage["epochs"])


def parameter_count(training):
    parameters = training.get("parameters")
    trainable = training.get("trainable_parameters")
    if parameters is None:
        return None
    return f"{parameters:,}" + ("" if trainable is None else f" ({trainable:,} trainable)")


def epochs_summary(training):
    if "epochs_completed" not in training:
        return None
    summary = f"{training['epochs_completed']} / {training.get('best_epoch', MISSING)}"
    return summary + (" (stopped early)" if training.get("stopped_early") else "")


def headline_table(metrics):
    rows = [
        (metric.label, format_value(metrics[metric.key]), format_interval(metrics["intervals"].get(metric.key)))
        for metric in metrics_shown(REPORT)
    ]
    return markdown_table(("metric", "value", f"{INTERVAL_LEVEL:.0%} interval"), rows, align="lrr")


def metric_notes(metrics):
    """What the intervals are, and which classes the macro averages and precision leave aside."""
    interval = next((interval for interval in metrics["intervals"].values() if interval), None)
    notes = []
    if interval is not None:
        notes.append(
            f"Intervals: percentile bootstrap over the {metrics['n_images']:,} test images "
            f"({interval['draws']:,} resamples, seed {interval['seed']})."
        )
    absent = [name for name, row in metrics["per_class"].items() if row["support"] == 0]
    if absent:
        notes.append(f"No test images of {', '.join(absent)}: macro averages are over the other classes.")
    predicted = [sum(column) for column in zip(*metrics["confusion_matrix"])]
    never = [name for name, count in zip(metrics["class_names"], predicted) if count == 0]
    if never:
        notes.append(f"Never predicted: {', '.join(never)} (precision 0).")
    return " ".join(notes)


def per_class_table(metrics):
    rows = [
        (
            name,
            CLASS_DESCRIPTIONS[name],
            *(format_value(row[key]) for key in ("precision", "recall", "f1", "auc")),
            f"{row['support']:,}",
        )
        for name, row in metrics["per_class"].items()
    ]
    return markdown_table(("class", "diagnosis", "precision", "recall", "F1", "AUC", "support"), rows, align="llrrrrr")


def frame_table(table):
    """A DataFrame of counts (classes as rows) as a markdown table."""
    rows = [(str(index), *(f"{value:,}" for value in values)) for index, values in zip(table.index, table.to_numpy())]
    return markdown_table(("class", *map(str, table.columns)), rows, align="l" + "r" * len(table.columns))


def class_counts(dx, column):
    """Images per class, with a total: the data table of a test set that has no split."""
    counts = pd.Series(dx).value_counts().reindex(list(CLASS_NAMES), fill_value=0)
    table = counts.to_frame(column)
    table.loc["total"] = counts.sum()
    return table
