"""Several runs side by side, with a paired test between every two of them.

    from evaluation import compare_runs
    compare_runs(["results/runs/20250101-120000-cnn", "results/runs/20250101-140000-densenet"],
                 "results/comparison")

The runs must have been evaluated on the same test images (trained on one split, `--split FILE`).
Every run is then scored on the same bootstrap resamples, and two runs are compared image by
image: a paired test sees a difference that two overlapping intervals would hide.
"""

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from common.errors import DataError
from common.files import new_folder, write_json, write_text
from common.run_folder import METRICS_FILENAME, PREDICTIONS_FILENAME, existing_run_dir
from evaluation.catalogue import COMPARISON, metrics_shown
from evaluation.clinical import clinical_cells, clinical_metrics_text, clinical_table
from evaluation.markdown import format_duration, format_interval, format_value, markdown_table
from evaluation.metrics import (
    BOOTSTRAP_DRAWS,
    INTERVAL_LEVEL,
    bootstrap_interval,
    bootstrap_weights,
    compute_metrics,
    mean_of_ratios,
    weighted_hits,
)
from evaluation.plots import plot_comparison
from evaluation.predictions import read_predictions
from evaluation.run_files import read_run_files

COMPARISON_FILENAMES = ("comparison.md", "comparison.json", "comparison.png")


def compare_runs(run_dirs, output_dir, *, bootstrap_draws=BOOTSTRAP_DRAWS, seed=0, verbose=True):
    """Compares evaluated runs and writes `comparison.md`, `comparison.json` and `comparison.png`.

    For every run: balanced accuracy, macro AUC and melanoma sensitivity with their intervals,
    accuracy, macro F1, parameters and wall time. For every two runs: the difference in balanced
    accuracy (second minus first) with its paired bootstrap interval and two-sided p-value, and
    McNemar's exact test on which images each gets right. The figure shows each run's
    row-normalised confusion matrix and the recall per class of all runs.

    Args:
        run_dirs: two or more run folders, each with a `predictions.csv`; labelled by folder name.
        output_dir: the folder to create for the three files, once every input has been
            checked. An existing folder is never written into: "-2", "-3", ... is appended instead.
        bootstrap_draws: resamples of the test images, shared by all runs.
        seed: fixes the resamples.
        verbose: print where the comparison went.

    Returns:
        The comparison (the content of `comparison.json`).

    Raises:
        DataError: fewer than two runs, two runs with the same folder name, the runs were evaluated on different test images or labels, or a run's
            files are missing or malformed.
    """
    run_dirs, labels = labelled_runs(run_dirs)
    predictions = {label: read_predictions(run_dir / PREDICTIONS_FILENAME) for label, run_dir in zip(labels, run_dirs)}
    y_true, probabilities = shared_test_set(predictions)

    runs = []
    for label, run_dir in zip(labels, run_dirs):
        training = read_run_files(run_dir).training
        runs.append(
            {
                "label": label,
                "run_dir": str(run_dir),
                "parameters": training.get("parameters"),
                "wall_time_s": training.get("wall_time_s"),
                # The same number of images and the same seed give the same resamples as `compare_pairs`.
                "metrics": compute_metrics(y_true, probabilities[label], bootstrap_draws=bootstrap_draws, seed=seed),
                # As the run's evaluation computed it: fitted on the run's own validation predictions.
                "clinical": run_clinical(run_dir),
            }
        )
    metrics = {run["label"]: run["metrics"] for run in runs}
    pairs = compare_pairs(y_true, probabilities, metrics, bootstrap_draws=bootstrap_draws, seed=seed)
    comparison = {
        "n_images": len(y_true),
        "bootstrap": {"draws": bootstrap_draws, "seed": seed, "level": INTERVAL_LEVEL},
        "runs": runs,
        "pairs": pairs,
    }

    output_dir = new_folder(output_dir)
    markdown_path, json_path, figure_path = (output_dir / name for name in COMPARISON_FILENAMES)
    write_json(json_path, comparison)
    plot_comparison({label: metrics[label]["confusion_matrix"] for label in labels}, figure_path)
    write_text(markdown_path, render_comparison(comparison, figure_path.name))
    if verbose:
        print(f"Wrote the comparison of {len(runs)} runs to {output_dir}")
    return comparison


def run_clinical(run_dir):
    """The clinical evaluation in a run's `metrics.json`; None where it has none (evaluated before it existed)."""
    path = Path(run_dir) / METRICS_FILENAME
    return json.loads(path.read_text()).get("clinical") if path.is_file() else None


def labelled_runs(run_dirs):
    """The run folders, checked, and their labels (their folder names).

    Raises:
        DataError: a folder does not exist, fewer than two are given, or two share a name.
    """
    run_dirs = [existing_run_dir(run_dir) for run_dir in run_dirs]
    if len(run_dirs) < 2:
        raise DataError(f"a comparison needs at least two runs; got {len(run_dirs)}")
    labels = [run_dir.name for run_dir in run_dirs]
    if len(set(labels)) < len(labels):
        raise DataError(f"two of the runs have the same folder name, which labels them: {', '.join(labels)}")
    return run_dirs, labels


def compare_pairs(y_true, probabilities, metrics, *, bootstrap_draws, seed):
    """For every two runs (second minus first): the difference in balanced accuracy with its paired
    bootstrap interval and p-value, and McNemar's exact test on which images each gets right.

    Args:
        y_true: the true classes of the shared test images.
        probabilities: {run label: (images, 7) probabilities}, in the labels' order.
        metrics: {run label: its `compute_metrics`}.
    """
    weights = bootstrap_weights(len(y_true), bootstrap_draws, seed)
    predicted = {label: values.argmax(axis=1) for label, values in probabilities.items()}
    draws = {label: mean_of_ratios(*weighted_hits(y_true, predicted[label], weights)) for label in predicted}
    pairs = []
    for first, second in itertools.combinations(predicted, 2):
        differences = draws[second] - draws[first]
        pairs.append(
            {
                "run_a": first,
                "run_b": second,
                "balanced_accuracy_difference": metrics[second]["balanced_accuracy"]
                - metrics[first]["balanced_accuracy"],
                "interval": bootstrap_interval(differences, seed=seed),
                "p_value": bootstrap_p_value(differences),
                "mcnemar": mcnemar_exact(predicted[first] == y_true, predicted[second] == y_true),
            }
        )
    return pairs


def shared_test_set(predictions):
    """The true classes and every run's probabilities, aligned on the first run's image order.

    Args:
        predictions: {run label: `read_predictions` result}.

    Raises:
        DataError: two runs have different sets of test images, or disagree on a true class.
    """
    (first, (reference, y_true, _)), *_ = predictions.items()
    image_ids = pd.Index(reference["image_id"])
    probabilities = {}
    for label, (frame, labels, run_probabilities) in predictions.items():
        own_ids = pd.Index(frame["image_id"])
        if set(own_ids) != set(image_ids):
            shared = len(image_ids.intersection(own_ids))
            raise DataError(
                f"runs {first} and {label} were evaluated on different test images ({len(image_ids):,} and "
                f"{len(own_ids):,} images, {shared:,} shared): train them on one split (--split FILE) to compare them"
            )
        positions = own_ids.get_indexer(image_ids)
        if np.any(labels[positions] != y_true):
            raise DataError(f"runs {first} and {label} give different true classes to the same test images")
        probabilities[label] = run_probabilities[positions]
    return y_true, probabilities


def bootstrap_p_value(differences):
    """Two-sided p-value of "no difference" from paired bootstrap draws of a difference.

    Twice the share of draws on the far side of zero from the bulk, counting the observed
    sample as one more draw (Davison & Hinkley, 1997) so that it is never 0: with 1,000 draws
    the smallest p-value is 2/1,001. It is below 0.05 where the 95% interval excludes zero.
    """
    below = np.count_nonzero(differences <= 0)
    above = np.count_nonzero(differences >= 0)
    return min(1.0, 2 * (min(below, above) + 1) / (len(differences) + 1))


def mcnemar_exact(correct_a, correct_b):
    """McNemar's exact test: of the images exactly one run gets right, are both runs equally likely to be that run?

    Exact (binomial) rather than chi-square, so that it holds however few images the runs
    disagree on.
    """
    only_a = int(np.count_nonzero(correct_a & ~correct_b))
    only_b = int(np.count_nonzero(correct_b & ~correct_a))
    disagreements = only_a + only_b
    p_value = binomtest(only_a, disagreements, 0.5).pvalue if disagreements else 1.0
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": float(p_value), "test": "exact binomial"}


def render_comparison(comparison, figure_name):
    """The markdown of `comparison.md`."""
    bootstrap = comparison["bootstrap"]
    run_rows = [
        (
            run["label"],
            *(
                f"{format_value(run['metrics'][metric.key])} {format_interval(run['metrics']['intervals'][metric.key])}"
                if metric.interval is not None
                else format_value(run["metrics"][metric.key])
                for metric in metrics_shown(COMPARISON)
            ),
            format_value(run["parameters"]),
            format_duration(run["wall_time_s"]) or format_value(None),
        )
        for run in comparison["runs"]
    ]
    pair_rows = [
        (
            pair["run_a"],
            pair["run_b"],
            f"{pair['balanced_accuracy_difference']:+.3f}",
            format_interval(pair["interval"]),
            format_p_value(pair["p_value"]),
            f"{pair['mcnemar']['only_a_correct']:,}",
            f"{pair['mcnemar']['only_b_correct']:,}",
            format_p_value(pair["mcnemar"]["p_value"]),
        )
        for pair in comparison["pairs"]
    ]
    level = f"{bootstrap['level']:.0%}"
    sections = [
        f"# Comparison of {len(comparison['runs'])} runs",
        f"All runs were evaluated on the same {comparison['n_images']:,} test images. In square brackets: {level} "
        f"percentile bootstrap intervals over these images ({bootstrap['draws']:,} resamples, seed "
        f"{bootstrap['seed']}), the same resamples for every run. Files: [comparison.json](comparison.json).",
        "## Runs",
        markdown_table(
            ("run", *(metric.name for metric in metrics_shown(COMPARISON)), "parameters", "wall time"),
            run_rows,
            align="l" + "r" * (len(metrics_shown(COMPARISON)) + 2),
        ),
    ]
    clinical_rows = [(run["label"], *clinical_cells(run)) for run in comparison["runs"] if run.get("clinical")]
    if clinical_rows:
        sections += [
            "## Clinical evaluation",
            "From each run's own evaluation (metrics.json), each fitted on its validation predictions. "
            + clinical_metrics_text(),
            clinical_table("run", clinical_rows),
        ]
    sections += [
        "## Paired tests",
        "Δ is the second run's balanced accuracy minus the first's, with its paired bootstrap interval "
        "and two-sided p-value. McNemar's exact test asks whether, among the images exactly one of the "
        "two runs classifies correctly, each run is that one as often as the other.",
        markdown_table(
            (
                "first run",
                "second run",
                "Δ balanced accuracy",
                f"{level} interval",
                "bootstrap p",
                "only first correct",
                "only second correct",
                "McNemar p",
            ),
            pair_rows,
            align="llrrrrrr",
        ),
        "## Confusion matrices and recall per class",
        f"![Row-normalised confusion matrices and recall per class]({figure_name})",
    ]
    return "\n\n".join(sections) + "\n"


def format_p_value(p_value):
    return "< 0.001" if p_value < 0.001 else f"{p_value:.3f}"
