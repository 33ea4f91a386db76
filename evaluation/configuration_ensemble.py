"""An ensemble of a study's configurations: the mean of their fold ensembles' probabilities.

The ISIC 2018 and 2019 leaders averaged several architectures; models that err differently
average to fewer errors. Which configurations to average is chosen on out-of-fold validation
(every non-test image scored by the fold model that did not train on it), never on test: every
subset of two or more configurations is tried (57 for six), and the one with the best out-of-fold
balanced accuracy kept, the smaller on a tie. Its test score is then set against the best single
configuration's (also chosen out of fold) with the paired bootstrap and McNemar's test.

The study's summary writes the choice into `summary/configuration_ensemble.json` and its
predictions into `summary/ensembles/<a>+<b>/`. `Predictor.load` takes it as `STUDY_DIR/ensemble`,
and any other as `STUDY_DIR/<a>+<b>`, so `predict`, `serve` and `evaluate --data-dir` do too.
"""

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from common.files import read_json, write_json
from common.run_folder import VAL_PREDICTIONS_FILENAME
from common.study_folder import SUMMARY_DIR
from dataset.metadata import CLASS_NAMES, class_indices
from evaluation.compare import compare_pairs
from evaluation.markdown import format_interval, format_value, markdown_table
from evaluation.metrics import compute_metrics
from evaluation.predictions import read_predictions

CONFIGURATION_SEPARATOR = "+"
# `STUDY_DIR/ensemble`: the ensemble the study's summary chose.
CHOSEN_ALIAS = "ensemble"
CHOICE_FILENAME = "configuration_ensemble.json"
# Beyond this many configurations, trying every subset (2^n) gives way to greedy forward selection.
EXHAUSTIVE_LIMIT = 10


def resolve_configurations(study_dir, configuration):
    """The configurations a `STUDY_DIR/<name>` path names: [name], the members of "a+b", those of
    the summary's chosen "ensemble", or [None] for `STUDY_DIR` alone (its one configuration).

    Raises:
        DataError: "ensemble" where the summary chose none.
    """
    if configuration is None:
        return [None]
    if configuration == CHOSEN_ALIAS:
        path = Path(study_dir) / SUMMARY_DIR / CHOICE_FILENAME
        choice = read_json(
            path,
            f"{study_dir}: its summary chose no ensemble of configurations (that needs --folds and two configurations, and "
            f"a finished summary); name one as {Path(study_dir) / 'CONFIGURATION_A+CONFIGURATION_B'}",
        )
        return list(choice["configurations"])
    names = configuration.split(CONFIGURATION_SEPARATOR)
    if len(names) != len(set(names)) or not all(names):
        raise DataError(
            f"{study_dir}/{configuration}: name each configuration of an ensemble once, joined by {CONFIGURATION_SEPARATOR!r}"
        )
    return names


def out_of_fold_probabilities(members):
    """A configuration's out-of-fold validation probabilities, pooled over its fold runs (the mean
    over seeds), as a table indexed by image id with columns 0-6 and dx; None unless every member
    is a fold run with `val_predictions.csv`."""
    if any(member["fold"] is None for member in members):
        return None
    frames = []
    for member in members:
        path = Path(member["run_dir"]) / VAL_PREDICTIONS_FILENAME
        if not path.is_file():
            return None
        frame, _, probabilities = read_predictions(path)
        frames.append(pd.DataFrame(probabilities, index=frame["image_id"]).assign(dx=frame["dx"].to_numpy()))
    columns = list(range(len(CLASS_NAMES)))
    return pd.concat(frames).groupby(level=0).agg({**{column: "mean" for column in columns}, "dx": "first"})


def balanced_accuracy(y_true, probabilities):
    predicted = probabilities.argmax(axis=1)
    return float(np.mean([np.mean(predicted[y_true == label] == label) for label in np.unique(y_true)]))


def choose_ensemble(out_of_fold):
    """The subset of configurations (two or more) whose mean out-of-fold probabilities score the
    best balanced accuracy; ties go to the smaller, then the earlier.

    Args:
        out_of_fold: {configuration: `out_of_fold_probabilities` table}, over the same images.

    Returns:
        {"configurations": [...], "out_of_fold_balanced_accuracy", "candidates": [{"configurations", "balanced_accuracy"}], "search"}.

    Raises:
        DataError: the configurations' out-of-fold images differ (they are not one split).
    """
    labels = list(out_of_fold)
    reference = out_of_fold[labels[0]].index
    for label in labels[1:]:
        if set(out_of_fold[label].index) != set(reference):
            raise DataError(
                f"{labels[0]} and {label} were validated on different images: an ensemble of them needs one split and fold assignment"
            )
    y_true = class_indices(out_of_fold[labels[0]]["dx"])
    columns = list(range(len(CLASS_NAMES)))
    values = {label: out_of_fold[label].loc[reference, columns].to_numpy() for label in labels}

    def score(subset):
        return balanced_accuracy(y_true, np.mean([values[label] for label in subset], axis=0))

    if len(labels) <= EXHAUSTIVE_LIMIT:
        search = "every subset of two or more"
        subsets = [subset for size in range(2, len(labels) + 1) for subset in itertools.combinations(labels, size)]
        candidates = [{"configurations": list(subset), "balanced_accuracy": score(subset)} for subset in subsets]
    else:
        # Greedy forward selection (Caruana et al., 2004), without replacement.
        search = "greedy forward selection"
        chosen = [max(labels, key=lambda label: score([label]))]
        candidates = []
        while len(chosen) < len(labels):
            best = max((label for label in labels if label not in chosen), key=lambda label: score([*chosen, label]))
            chosen.append(best)
            candidates.append({"configurations": list(chosen), "balanced_accuracy": score(chosen)})
    best = max(
        candidates, key=lambda candidate: (round(candidate["balanced_accuracy"], 12), -len(candidate["configurations"]))
    )
    return {
        "configurations": best["configurations"],
        "out_of_fold_balanced_accuracy": best["balanced_accuracy"],
        "candidates": candidates,
        "search": search,
    }


def write_configuration_ensemble(
    output_dir, configurations, ensembles, image_ids, y_true, write_ensemble, *, bootstrap_draws, seed
):
    """Chooses the study's ensemble of configurations and writes it beside the summary.

    Args:
        output_dir: the summary folder.
        configurations: the summary's {label: {"runs", "ensemble", "out_of_fold", ...}}.
        ensembles: {label: test probabilities of its fold ensemble}.
        image_ids, y_true: the test images.
        write_ensemble: `evaluation.study.write_ensemble`, which writes an ensemble's folder.
        bootstrap_draws, seed: of the intervals and the paired bootstrap.

    Returns:
        What `summary.json` holds under "configuration_ensemble", or None (with a "reason")
        where the study has fewer than two configurations with out-of-fold predictions.
    """
    out_of_fold = {
        label: out_of_fold_probabilities(configuration["runs"]) for label, configuration in configurations.items()
    }
    out_of_fold = {label: table for label, table in out_of_fold.items() if table is not None}
    if len(out_of_fold) < 2:
        return {
            "reason": "needs two or more configurations trained over folds (--folds), whose out-of-fold validation chooses it"
        }
    choice = choose_ensemble(out_of_fold)
    label = CONFIGURATION_SEPARATOR.join(choice["configurations"])
    probabilities = np.mean([ensembles[name] for name in choice["configurations"]], axis=0)
    metrics = compute_metrics(y_true, probabilities, bootstrap_draws=bootstrap_draws, seed=seed)
    write_ensemble(output_dir, label, image_ids, y_true, probabilities, metrics)
    best_single = max(out_of_fold, key=lambda name: configurations[name]["out_of_fold"]["balanced_accuracy"])
    (pair,) = compare_pairs(
        y_true,
        {best_single: ensembles[best_single], label: probabilities},
        {best_single: configurations[best_single]["ensemble"], label: metrics},
        bootstrap_draws=bootstrap_draws,
        seed=seed,
    )
    result = {
        "label": label,
        **choice,
        "test": metrics,
        "best_single": {
            "configuration": best_single,
            "out_of_fold_balanced_accuracy": configurations[best_single]["out_of_fold"]["balanced_accuracy"],
            "test_balanced_accuracy": configurations[best_single]["ensemble"]["balanced_accuracy"],
        },
        "against_best_single": {
            key: pair[key] for key in ("balanced_accuracy_difference", "interval", "p_value", "mcnemar")
        },
    }
    if Path(output_dir).name == SUMMARY_DIR:
        write_json(Path(output_dir) / CHOICE_FILENAME, {"configurations": choice["configurations"], "label": label})
    return result


def configuration_ensemble_section(result):
    """The "Ensemble of configurations" section of `summary.md`, or "" where there is none."""
    if not result:
        return ""
    if "label" not in result:
        return f"## Ensemble of configurations\n\nNone: it {result['reason']}."
    best, pair = result["best_single"], result["against_best_single"]
    rows = [
        (
            f"{result['label']} (chosen)",
            format_value(result["out_of_fold_balanced_accuracy"]),
            f"{format_value(result['test']['balanced_accuracy'])} {format_interval(result['test']['intervals'].get('balanced_accuracy'))}",
        ),
        (
            f"{best['configuration']} (best single)",
            format_value(best["out_of_fold_balanced_accuracy"]),
            format_value(best["test_balanced_accuracy"]),
        ),
    ]
    return "\n\n".join(
        [
            "## Ensemble of configurations",
            f"The mean of configurations' fold ensembles, chosen by out-of-fold balanced accuracy ({result['search']}, "
            f"{len(result['candidates'])} tried); `python main.py predict STUDY_DIR/ensemble ...` predicts with it.",
            markdown_table(
                ("ensemble", "out-of-fold balanced accuracy", "test balanced accuracy [95%]"), rows, align="lrr"
            ),
            f"Against the best single configuration on test: {pair['balanced_accuracy_difference']:+.3f} {format_interval(pair['interval'])}, "
            f"paired bootstrap p {pair['p_value']:.3f}, McNemar p {pair['mcnemar']['p_value']:.3f}.",
        ]
    )
