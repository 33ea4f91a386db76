"""A study's summary: the spread over folds and seeds, out-of-fold metrics, fold ensembles, paired tests.

    from evaluation import summarize_study, compare_studies
    summarize_study("results/studies/20261125-010000-all-3folds")   # its summary/ folder
    compare_studies([study_a, study_b], "results/comparisons/studies")

One run's test score mixes what the configuration can do with the luck of its initialisation,
sampling and validation fold. Over a study's K folds (or N seeds) each configuration has K scores:
their mean and spread separate the two, and the mean of the K models' probabilities (the fold
ensemble) is usually better than any one of them. Two configurations are compared run by run,
matched on (fold, seed):

- over folds, with the corrected resampled t-test of Nadeau & Bengio (2003, "Inference for the
  Generalization Error"): the K differences are not independent (their training sets overlap),
  so the variance of their mean is taken as (1/J + n_test/n_train) times their variance rather
  than 1/J of it (J = the runs matched). Here every fold run is scored on the same fixed test
  subset; n_test/n_train is that subset's size over a fold run's training images, as in the
  repeated train/test design the correction was derived for;
- over seeds on one split, with the paired t-test;
- and the two ensembles image by image on the test subset, with the paired bootstrap and
  McNemar's test of `compare_runs`.
"""

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from common.errors import DataError
from common.files import new_folder, write_json, write_text
from common.run_folder import (
    METRICS_FILENAME,
    PREDICTIONS_FILENAME,
    SPLIT_FILENAME,
    VAL_PREDICTIONS_FILENAME,
    read_training_summary,
)
from common.study_folder import SUMMARY_DIR, finished_runs
from dataset.metadata import CLASS_NAMES, class_indices
from dataset.split import load_split
from evaluation.catalogue import STUDY, keys_shown, metrics_shown
from evaluation.clinical import clinical_summary_sections, ensemble_clinical, test_metadata
from evaluation.compare import compare_runs, shared_test_set
from evaluation.configuration_ensemble import configuration_ensemble_section, write_configuration_ensemble
from evaluation.markdown import format_interval, format_value, markdown_table
from evaluation.metrics import BOOTSTRAP_DRAWS, compute_metrics
from evaluation.plots import plot_study_spread
from evaluation.predictions import predictions_frame, read_predictions, write_predictions
from evaluation.robustness import read_study_robustness, study_robustness_section

SUMMARY_FILENAMES = ("summary.md", "summary.json", "spread.png")
ENSEMBLES_DIR = "ensembles"
COMPARISON_DIR = "comparison"
# The metrics of the summary's tables and figure; each has a bootstrap interval.
SUMMARY_METRICS = keys_shown(STUDY)


def summarize_study(study_dir, *, bootstrap_draws=BOOTSTRAP_DRAWS, seed=0, verbose=True):
    """Writes the study's `summary/` from its finished runs' files (see `write_summary`)."""
    study_dir = Path(study_dir)
    runs = finished_runs(study_dir)
    if not runs:
        raise DataError(f"{study_dir}: no finished run to summarise yet (continue it with --resume)")
    title = f"Study {study_dir.name}"
    return write_summary(
        runs,
        study_dir / SUMMARY_DIR,
        title,
        bootstrap_draws=bootstrap_draws,
        seed=seed,
        verbose=verbose,
        robustness=read_study_robustness(study_dir),
    )


def compare_studies(study_dirs, output_dir, *, bootstrap_draws=BOOTSTRAP_DRAWS, seed=0, verbose=True):
    """Compares the configurations of several studies, each labelled "<study folder>/<configuration>".

    Their ensembles are compared on the test subset, which the studies must share; the paired
    tests over folds or seeds need the studies to share their split (fold assignment) too, e.g. the
    second run with `--split FIRST_STUDY/split.csv`: where they do not, they are left out, saying why.
    """
    study_dirs = [Path(study_dir) for study_dir in study_dirs]
    if len(study_dirs) < 2:
        raise DataError(f"a comparison of studies needs at least two; got {len(study_dirs)}")
    runs = [
        {**run, "configuration": f"{study_dir.name}/{run['configuration']}"}
        for study_dir in study_dirs
        for run in finished_runs(study_dir)
    ]
    splits = [load_split(study_dir / SPLIT_FILENAME) for study_dir in study_dirs]
    same_split = all(split.equals(splits[0]) for split in splits[1:])
    title = f"Comparison of studies {', '.join(study_dir.name for study_dir in study_dirs)}"
    return write_summary(
        runs,
        output_dir,
        title,
        paired_over_runs=same_split,
        bootstrap_draws=bootstrap_draws,
        seed=seed,
        verbose=verbose,
    )


def write_summary(
    runs,
    output_dir,
    title,
    *,
    paired_over_runs=True,
    bootstrap_draws=BOOTSTRAP_DRAWS,
    seed=0,
    verbose=True,
    robustness=None,
):
    """Summarises runs grouped by configuration into a new `output_dir`.

    Writes `summary.json`, `summary.md`, `spread.png` (every run's score, and the mean per
    configuration), `ensembles/<configuration>/` (the ensemble's `predictions.csv` and
    `metrics.json`) and, for two or more configurations, `comparison/` (`compare_runs` of the
    ensembles).

    Args:
        runs: {"configuration", "fold", "seed", "run_dir"} of each evaluated run; all scored on one test subset.
        output_dir: the folder to create (an existing one gets "-2", ...).
        title: the heading of `summary.md`.
        paired_over_runs: whether runs with the same (fold, seed) are paired (they share a split).
        robustness: {label: corruption benchmark} of the configurations (`evaluation.robustness`), shown where given.

    Returns:
        The summary (the content of `summary.json`).
    """
    predictions = {run["run_dir"]: read_predictions(Path(run["run_dir"]) / PREDICTIONS_FILENAME) for run in runs}
    y_true, probabilities = shared_test_set(predictions)
    image_ids = next(iter(predictions.values()))[0]["image_id"].to_numpy()
    groups = scored_groups(runs, y_true, probabilities)
    ensembles = {
        label: np.mean([probabilities[member["run_dir"]] for member in members], axis=0)
        for label, members in groups.items()
    }
    configurations = {
        label: {
            "runs": members,
            "spread": {key: spread([member[key] for member in members]) for key in SUMMARY_METRICS},
            "out_of_fold": out_of_fold_metrics(members, bootstrap_draws=bootstrap_draws, seed=seed),
            "ensemble": compute_metrics(y_true, ensembles[label], bootstrap_draws=bootstrap_draws, seed=seed),
        }
        for label, members in groups.items()
    }

    output_dir = new_folder(output_dir)
    ensemble_dirs = [
        write_ensemble(output_dir, label, image_ids, y_true, ensembles[label], configuration["ensemble"])
        for label, configuration in configurations.items()
    ]
    metadata = test_metadata(image_ids)
    for folder, (label, configuration) in zip(ensemble_dirs, configurations.items()):
        configuration["clinical"] = ensemble_clinical(
            folder,
            pooled_out_of_fold(groups[label]),
            image_ids,
            y_true,
            ensembles[label],
            metadata,
            bootstrap_draws=bootstrap_draws,
            seed=seed,
        )
    comparison = None
    if len(configurations) > 1:
        comparison = compare_runs(
            ensemble_dirs, output_dir / COMPARISON_DIR, bootstrap_draws=bootstrap_draws, seed=seed, verbose=False
        )
    summary = {
        "title": title,
        "n_test_images": len(y_true),
        "configurations": configurations,
        "pairs": paired_tests(groups, comparison, ensemble_dirs, len(y_true), over_runs=paired_over_runs),
        "paired_over_runs": paired_over_runs,
        "configuration_ensemble": write_configuration_ensemble(
            output_dir,
            configurations,
            ensembles,
            image_ids,
            y_true,
            write_ensemble,
            bootstrap_draws=bootstrap_draws,
            seed=seed,
        ),
        "robustness": robustness or None,
    }
    markdown_path, json_path, figure_path = (output_dir / name for name in SUMMARY_FILENAMES)
    write_json(json_path, summary)
    plot_study_spread(
        {label: configuration["runs"] for label, configuration in configurations.items()},
        metrics_shown(STUDY),
        figure_path,
    )
    write_text(markdown_path, render_summary(summary, figure_path.name))
    if verbose:
        print(f"Wrote the summary of {len(runs)} runs of {len(configurations)} configurations to {output_dir}")
    return summary


def scored_groups(runs, y_true, probabilities):
    """The runs grouped by configuration, each with its test scores of `SUMMARY_METRICS` (no intervals)."""
    groups = {}
    for run in runs:
        scores = compute_metrics(y_true, probabilities[run["run_dir"]], bootstrap_draws=0)
        groups.setdefault(run["configuration"], []).append({**run, **{key: scores[key] for key in SUMMARY_METRICS}})
    return groups


def write_ensemble(output_dir, label, image_ids, y_true, probabilities, metrics):
    """Writes a configuration's ensemble into `ensembles/<configuration>/` and returns that folder.

    A run-like folder (`predictions.csv`, `metrics.json`): `compare` and the notebook take it as
    they take a run.
    """
    folder = output_dir / ENSEMBLES_DIR / label.replace("/", "--")
    write_predictions(folder / PREDICTIONS_FILENAME, predictions_frame(image_ids, y_true, probabilities))
    write_json(folder / METRICS_FILENAME, metrics)
    return folder


def spread(values):
    """Mean, sample standard deviation, min and max of the defined values (None where there are none)."""
    values = np.array([value for value in values if value is not None], dtype=np.float64)
    if len(values) == 0:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
        "min": float(values.min()),
        "max": float(values.max()),
        "n": len(values),
    }


def out_of_fold_metrics(members, *, bootstrap_draws, seed):
    """The metrics of the fold runs' validation predictions pooled: every non-test image scored by
    the model that did not train on it (with several seeds, the mean of their probabilities).

    None unless the members are fold runs with `val_predictions.csv`.

    Raises:
        DataError: one seed's folds score an image twice (they are not one fold assignment).
    """
    pooled = pooled_out_of_fold(members)
    return None if pooled is None else compute_metrics(*pooled, bootstrap_draws=bootstrap_draws, seed=seed)


def pooled_out_of_fold(members):
    """(y_true, probabilities) of the fold runs' validation predictions pooled (see `out_of_fold_metrics`);
    None unless the members are fold runs with `val_predictions.csv`."""
    if any(member["fold"] is None for member in members):
        return None
    per_seed = {}
    for member in members:
        path = Path(member["run_dir"]) / VAL_PREDICTIONS_FILENAME
        if not path.is_file():
            return None
        frame, _, member_probabilities = read_predictions(path)
        per_seed.setdefault(member["seed"], []).append(
            pd.DataFrame(member_probabilities, index=frame["image_id"]).assign(dx=frame["dx"].to_numpy())
        )
    pooled = [pd.concat(frames) for frames in per_seed.values()]
    for frame in pooled:
        if frame.index.duplicated().any():
            raise DataError(f"image {frame.index[frame.index.duplicated()][0]} is in two folds' validation predictions")
    columns = list(range(len(CLASS_NAMES)))
    table = pd.concat(pooled).groupby(level=0).agg({**{column: "mean" for column in columns}, "dx": "first"})
    return class_indices(table["dx"]), table[columns].to_numpy()


def nadeau_bengio_test(differences, test_train_ratio):
    """The corrected resampled t-test (Nadeau & Bengio, 2003) of "the mean difference is 0".

    t = mean(d) / sqrt((1/J + n_test/n_train) * var(d)), with var the sample variance (ddof 1) of
    the J differences d, on J - 1 degrees of freedom; two-sided.

    Returns:
        {"t", "df", "p_value", "mean_difference", "n"}; t and p are None where every difference
        is the same (no variance to test against: a tie, or too few runs to see the noise).
    """
    differences = np.asarray(differences, dtype=np.float64)
    count, mean = len(differences), float(differences.mean())
    variance = float(differences.var(ddof=1))
    if variance == 0:
        return {"t": None, "df": count - 1, "p_value": None, "mean_difference": mean, "n": count}
    statistic = mean / np.sqrt((1 / count + test_train_ratio) * variance)
    p_value = 2 * stats.t.sf(abs(statistic), df=count - 1)
    return {"t": float(statistic), "df": count - 1, "p_value": float(p_value), "mean_difference": mean, "n": count}


def paired_t_test(differences):
    """The paired t-test over seeds on one split: `nadeau_bengio_test` without the correction."""
    return nadeau_bengio_test(differences, 0.0)


def size_ratio(run, n_test):
    """n_test / n_train of a run: its training images as its `training.json` counts them."""
    train_images = read_training_summary(run["run_dir"]).get("train_images")
    if not train_images:
        raise DataError(f"{run['run_dir']}: training.json does not give the number of training images (train_images)")
    return n_test / train_images


def paired_tests(groups, comparison, ensemble_dirs, n_test, over_runs=True):
    """Every two configurations: the test over their matched runs' balanced accuracies (unless
    not `over_runs`: runs of different splits), and the ensembles' paired bootstrap and McNemar
    results from `comparison`."""
    by_ensemble = {}
    if comparison is not None:
        names = {folder.name: label for folder, label in zip(ensemble_dirs, groups)}
        by_ensemble = {(names[pair["run_a"]], names[pair["run_b"]]): pair for pair in comparison["pairs"]}
    pairs = []
    for first, second in itertools.combinations(groups, 2):
        scores = [
            {(run["fold"], run["seed"]): run["balanced_accuracy"] for run in groups[label]} for label in (first, second)
        ]
        matched = sorted(set(scores[0]) & set(scores[1]), key=str) if over_runs else []
        differences = [scores[1][key] - scores[0][key] for key in matched]
        folds = any(fold is not None for fold, _ in matched)
        if len(differences) < 2:
            test = None
        elif folds:
            ratio = size_ratio(groups[first][0], n_test)
            test = {
                "name": "corrected resampled t-test (Nadeau & Bengio)",
                "test_train_ratio": ratio,
                **nadeau_bengio_test(differences, ratio),
            }
        else:
            test = {"name": "paired t-test over seeds", **paired_t_test(differences)}
        ensemble = by_ensemble.get((first, second))
        pairs.append(
            {
                "configuration_a": first,
                "configuration_b": second,
                "matched_runs": [{"fold": fold, "seed": seed} for fold, seed in matched],
                "balanced_accuracy_differences": differences,
                "paired_over_runs": test,
                "ensembles": None
                if ensemble is None
                else {key: ensemble[key] for key in ("balanced_accuracy_difference", "interval", "p_value", "mcnemar")},
            }
        )
    return pairs


def render_summary(summary, figure_name):
    """The markdown of `summary.md`."""
    configurations = summary["configurations"]
    names = [metric.name for metric in metrics_shown(STUDY)]
    spread_rows = [
        (label, str(len(configuration["runs"])), *(mean_sd(configuration["spread"][key]) for key in SUMMARY_METRICS))
        for label, configuration in configurations.items()
    ]
    ensemble_rows = [
        (label, *(with_interval(configuration["ensemble"], key) for key in SUMMARY_METRICS))
        for label, configuration in configurations.items()
    ]
    sections = [
        f"# {summary['title']}",
        f"Every run was scored on the same {summary['n_test_images']:,} test images. Files: [summary.json](summary.json), "
        f"the ensembles' predictions in [{ENSEMBLES_DIR}/]({ENSEMBLES_DIR}/).",
        "## Spread over folds and seeds",
        "Per configuration, over its runs: mean ± standard deviation (min–max) of the test metrics.",
        markdown_table(("configuration", "runs", *names), spread_rows, align="lr" + "r" * len(SUMMARY_METRICS)),
        f"![Every run's test score, and the mean per configuration]({figure_name})",
        "## Ensembles",
        "The mean of the runs' test probabilities, with 95% bootstrap intervals over the test images.",
        markdown_table(("configuration", *names), ensemble_rows, align="l" + "r" * len(SUMMARY_METRICS)),
    ]
    out_of_fold = [
        (label, *(with_interval(c["out_of_fold"], key) for key in SUMMARY_METRICS))
        for label, c in configurations.items()
        if c["out_of_fold"]
    ]
    if out_of_fold:
        sections += [
            "## Out-of-fold validation",
            "Every non-test image scored by the fold model that did not train on it (with several seeds, their mean probabilities).",
            markdown_table(("configuration", *names), out_of_fold, align="l" + "r" * len(SUMMARY_METRICS)),
        ]
    sections += clinical_summary_sections(configurations, ENSEMBLES_DIR)
    if summary["pairs"]:
        sections += paired_tests_section(summary["pairs"], summary["paired_over_runs"])
    sections += [
        configuration_ensemble_section(summary.get("configuration_ensemble")),
        study_robustness_section(summary.get("robustness")),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def paired_tests_section(pairs, paired_over_runs):
    """The "Paired tests" section of `summary.md`: its heading, explanation and table."""
    unpaired = (
        ""
        if paired_over_runs
        else (" The studies do not share their split (and folds), so their runs are not paired over folds or seeds.")
    )
    rows = []
    for pair in pairs:
        test, ensembles = pair["paired_over_runs"], pair["ensembles"]
        rows.append(
            (
                pair["configuration_a"],
                pair["configuration_b"],
                f"{np.mean(pair['balanced_accuracy_differences']):+.3f}"
                if pair["balanced_accuracy_differences"]
                else "–",
                "–"
                if test is None
                else f"{test['name']}: t {format_value(test['t'])}, p {format_value(test['p_value'])}",
                "–"
                if ensembles is None
                else f"{ensembles['balanced_accuracy_difference']:+.3f} {format_interval(ensembles['interval'])}",
                "–" if ensembles is None else f"{ensembles['p_value']:.3f}",
                "–" if ensembles is None else f"{ensembles['mcnemar']['p_value']:.3f}",
            )
        )
    return [
        "## Paired tests",
        "Second minus first. Over runs matched on (fold, seed): the corrected resampled t-test of Nadeau & Bengio "
        "(2003) over folds, with variance factor 1/J + n_test/n_train (the fixed test subset over a fold run's "
        "training images), or the paired t-test over seeds. On the ensembles' test predictions: the paired "
        f"bootstrap interval and p-value, and McNemar's exact test ([{COMPARISON_DIR}/]({COMPARISON_DIR}/comparison.md)).{unpaired}",
        markdown_table(
            (
                "first",
                "second",
                "mean Δ over runs",
                "paired over runs",
                "Δ ensembles [95%]",
                "bootstrap p",
                "McNemar p",
            ),
            rows,
            align="llrlrrr",
        ),
    ]


def mean_sd(values):
    """A `spread` as "mean ± sd (min–max)"."""
    if values["mean"] is None:
        return format_value(None)
    sd = f" ± {values['sd']:.3f}" if values["sd"] is not None else ""
    return f"{values['mean']:.3f}{sd} ({values['min']:.3f}–{values['max']:.3f})"


def with_interval(metrics, key):
    """A metric with its bootstrap interval."""
    return f"{format_value(metrics[key])} {format_interval(metrics['intervals'].get(key))}"
