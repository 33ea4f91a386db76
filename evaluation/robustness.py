"""The robustness benchmark: a model scored on its validation and test images under the
dermatology-specific corruptions of `dataset.corruptions`, each at three severities.

    clean, corrupted = predict_corrupted(predictor, images, image_ids, metadata, seed=0)
    scores = score_robustness(y_true, clean, corrupted)   # per corruption and severity, and the mean

It stands in for other clinics' images, which this repository never sees: the mean corrupted
balanced accuracy over the 11 corruptions x 3 severities, and its ratio to the clean balanced
accuracy (1: no loss), per corruption. On validation it is for choosing; on test, for reporting.
A model trained with the same corruptions as augmentation (`corruption_augmentation`) has seen
their kind, so its gain here overstates its gain on real other clinics'.

A run's benchmark is two files in its folder: `robustness.json` (the scores) and
`robustness.npz` (every image's probabilities, clean and under each corruption), from which a
study's fold ensembles and ensembles of configurations are scored without running a model again.
Scored at another image size or seed, the files are `robustness-160px.json`,
`robustness-seed1.json`, ...; the run's report shows the default one.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from common.files import atomic_path, write_json
from dataset.corruptions import CORRUPTIONS, SEVERITIES, corrupt_images, image_keys
from dataset.metadata import CLASS_NAMES
from evaluation.markdown import format_value, markdown_table

ROBUSTNESS_STEM = "robustness"
# A study's benchmarks: one file per configuration (and ensemble of configurations).
STUDY_ROBUSTNESS_DIR = "robustness"
SUBSETS = ("val", "test")
SUBSET_NAMES = {"val": "validation", "test": "test"}


def robustness_stem(image_size=None, seed=0):
    """The benchmark's file name without suffix: "robustness", "robustness-160px", "robustness-160px-seed1"."""
    return ROBUSTNESS_STEM + (f"-{image_size}px" if image_size else "") + (f"-seed{seed}" if seed else "")


def balanced_accuracy(y_true, predicted):
    """The mean recall over the classes that have images in `y_true` (scikit-learn's definition)."""
    y_true, predicted = np.asarray(y_true), np.asarray(predicted)
    present = np.unique(y_true)
    return float(np.mean([np.mean(predicted[y_true == label] == label) for label in present]))


def predict_corrupted(
    predictor, images, image_ids, metadata=None, *, seed=0, batch_size=32, image_labels=None, verbose=True
):
    """A model's probabilities for images, clean and under every corruption at every severity.

    Args:
        predictor: an `evaluation.Predictor` (or anything with its `predict`).
        images: (n, size, size, 3) uint8, the images as the model takes them.
        image_ids: the n images' ids: each image's corruption is drawn from (seed, its id), so it
            is corrupted alike whichever subset, order or fold model it comes with.
        metadata: the images' `age, sex, localization` rows, for metadata models; or None.
        seed: fixes every corruption's random choices.
        batch_size: images per prediction batch.
        image_labels: the images' true classes, for the progress lines; None: no progress shown.
        verbose: print each corruption's balanced accuracies as they come (with `image_labels`).

    Returns:
        (clean (n, 7), corrupted (corruptions, severities, n, 7)), in `CORRUPTIONS` and
        `SEVERITIES` order.
    """
    images = np.asarray(images)
    keys = image_keys(image_ids)
    clean = predictor.predict(images, metadata, batch_size=batch_size)
    corrupted = np.empty((len(CORRUPTIONS), len(SEVERITIES), *clean.shape), dtype=np.float32)
    for index, name in enumerate(CORRUPTIONS):
        for level, severity in enumerate(SEVERITIES):
            views = corrupt_images(images, name, severity, seed=seed, keys=keys)
            corrupted[index, level] = predictor.predict(views, metadata, batch_size=batch_size)
        if verbose and image_labels is not None:
            shown = ", ".join(
                f"{balanced_accuracy(image_labels, values.argmax(axis=1)):.3f}" for values in corrupted[index]
            )
            print(f"  {name}: balanced accuracy {shown} at severities {', '.join(map(str, SEVERITIES))}", flush=True)
    return clean, corrupted


def score_robustness(y_true, clean, corrupted):
    """The benchmark's scores from `predict_corrupted`'s probabilities.

    Returns:
        {"n_images", "clean_balanced_accuracy", "mean_corrupted_balanced_accuracy",
        "relative_balanced_accuracy" (mean corrupted / clean), "corruptions": {name: {"mean",
        "relative", "severities": {"1": ..., "2": ..., "3": ...}}}}.
    """
    clean_score = balanced_accuracy(y_true, clean.argmax(axis=1))
    scores = {
        name: {
            str(severity): balanced_accuracy(y_true, corrupted[index, level].argmax(axis=1))
            for level, severity in enumerate(SEVERITIES)
        }
        for index, name in enumerate(CORRUPTIONS)
    }
    mean = float(np.mean([value for severities in scores.values() for value in severities.values()]))
    return {
        "n_images": len(y_true),
        "clean_balanced_accuracy": clean_score,
        "mean_corrupted_balanced_accuracy": mean,
        "relative_balanced_accuracy": _ratio(mean, clean_score),
        "corruptions": {
            name: {
                "mean": float(np.mean(list(severities.values()))),
                "relative": _ratio(np.mean(list(severities.values())), clean_score),
                "severities": severities,
            }
            for name, severities in scores.items()
        },
    }


def _ratio(value, reference):
    return float(value / reference) if reference > 0 else None


# === A folder's benchmark files ===


def read_robustness(folder, stem=ROBUSTNESS_STEM):
    """The benchmark's scores in `folder` (`<stem>.json`), or None where it has none."""
    path = Path(folder) / f"{stem}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: damaged, not JSON ({error}); delete it and score the benchmark again") from None


def read_robustness_predictions(folder, stem=ROBUSTNESS_STEM):
    """{subset: (image ids, true classes, clean probabilities, corrupted probabilities)} of `<stem>.npz`; {} where absent."""
    path = Path(folder) / f"{stem}.npz"
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as arrays:
        if list(arrays["corruptions"]) != list(CORRUPTIONS):
            raise DataError(
                f"{path}: scored with other corruptions ({', '.join(arrays['corruptions'])}); score the benchmark again into a new file (--seed)"
            )
        return {
            subset: tuple(arrays[f"{subset}_{part}"] for part in ("image_ids", "labels", "clean", "corrupted"))
            for subset in SUBSETS
            if f"{subset}_clean" in arrays
        }


def write_robustness(folder, subset, image_ids, y_true, clean, corrupted, *, settings, stem=ROBUSTNESS_STEM):
    """Adds one subset's benchmark to `folder`'s `<stem>.json` and `<stem>.npz` (each written
    whole; the other subset's results are kept) and returns the subset's scores."""
    folder = Path(folder)
    scores = score_robustness(y_true, clean, corrupted)
    existing = read_robustness(folder, stem) or {}
    write_json(
        folder / f"{stem}.json", {**existing, **settings, "subsets": {**existing.get("subsets", {}), subset: scores}}
    )
    arrays = {
        f"{name}_{part}": values
        for name, (ids, labels, clean_values, corrupted_values) in read_robustness_predictions(folder, stem).items()
        for part, values in zip(
            ("image_ids", "labels", "clean", "corrupted"), (ids, labels, clean_values, corrupted_values)
        )
    }
    arrays.update(
        {
            f"{subset}_image_ids": np.asarray(image_ids, dtype=str),
            f"{subset}_labels": np.asarray(y_true),
            f"{subset}_clean": np.asarray(clean, dtype=np.float32),
            f"{subset}_corrupted": np.asarray(corrupted, dtype=np.float32),
        }
    )
    with atomic_path(folder / f"{stem}.npz") as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, corruptions=np.array(list(CORRUPTIONS)), **arrays)
    return scores


def pool_predictions(parts):
    """Several models' benchmark probabilities for one subset as one ensemble's: each image's
    mean over the models that scored it (a study's test images: every fold model; its validation
    images: the fold model that did not train on each, out of fold).

    Args:
        parts: a list of (image ids, true classes, clean, corrupted), as `read_robustness_predictions` gives.

    Returns:
        (image ids, true classes, clean, corrupted) of every image any part scored, in first-seen order.

    Raises:
        DataError: two parts give an image different true classes.
    """
    ids = pd.Index(pd.unique(np.concatenate([part[0] for part in parts])))
    labels = np.full(len(ids), -1)
    clean = np.zeros((len(ids), len(CLASS_NAMES)))
    corrupted = np.zeros((*parts[0][3].shape[:2], len(ids), len(CLASS_NAMES)))
    counts = np.zeros(len(ids))
    for part_ids, part_labels, part_clean, part_corrupted in parts:
        positions = ids.get_indexer(part_ids)
        if np.any((labels[positions] >= 0) & (labels[positions] != part_labels)):
            raise DataError(
                "two models' benchmark files give one image different true classes: were they trained on one split?"
            )
        labels[positions] = part_labels
        np.add.at(clean, positions, part_clean)
        np.add.at(counts, positions, 1)
        for index in range(part_corrupted.shape[0]):
            for level in range(part_corrupted.shape[1]):
                np.add.at(corrupted[index, level], positions, part_corrupted[index, level])
    return ids.to_numpy(), labels, clean / counts[:, None], corrupted / counts[:, None]


# === Reports ===


def robustness_metrics(folder):
    """The headline of the benchmark in `folder`, for its `metrics.json`: {"robustness": {subset:
    {clean, mean corrupted, relative, per corruption's mean}}}, or {} where it has none."""
    robustness = read_robustness(folder)
    if not robustness:
        return {}
    return {
        "robustness": {
            subset: {
                key: scores[key]
                for key in (
                    "n_images",
                    "clean_balanced_accuracy",
                    "mean_corrupted_balanced_accuracy",
                    "relative_balanced_accuracy",
                )
            }
            | {"corruptions": {name: values["mean"] for name, values in scores["corruptions"].items()}}
            for subset, scores in robustness["subsets"].items()
        }
    }


def robustness_section(folder, stem=ROBUSTNESS_STEM):
    """The "Robustness" section of a run's report (markdown), or "" where it has no benchmark."""
    robustness = read_robustness(folder, stem)
    if not robustness:
        return ""
    lines = [
        "## Robustness",
        f"Balanced accuracy under dermatology-specific corruptions (`dataset/corruptions.py`, seed {robustness.get('seed', 0)}"
        f", {robustness.get('image_size', '?')} px): a stand-in for other clinics' images. Relative: mean corrupted / clean.",
    ]
    for subset in SUBSETS:
        scores = robustness["subsets"].get(subset)
        if scores is not None:
            lines += [
                f"### {SUBSET_NAMES[subset].capitalize()} ({scores['n_images']:,} images)",
                robustness_table(scores),
            ]
    return "\n\n".join(lines)


def robustness_table(scores):
    """Per corruption: the balanced accuracy at each severity, their mean and its ratio to clean; then the mean over all."""
    header = ("corruption", *(f"severity {severity}" for severity in SEVERITIES), "mean", "relative")
    rows = [("clean", *[""] * len(SEVERITIES), format_value(scores["clean_balanced_accuracy"]), "")]
    rows += [
        (
            name.replace("_", " "),
            *(format_value(values["severities"][str(severity)]) for severity in SEVERITIES),
            format_value(values["mean"]),
            format_value(values["relative"]),
        )
        for name, values in scores["corruptions"].items()
    ]
    rows.append(
        (
            "**all corruptions**",
            *[""] * len(SEVERITIES),
            f"**{format_value(scores['mean_corrupted_balanced_accuracy'])}**",
            f"**{format_value(scores['relative_balanced_accuracy'])}**",
        )
    )
    return markdown_table(header, rows, align="l" + "r" * (len(SEVERITIES) + 2))


def read_study_robustness(study_dir):
    """{label: benchmark} of the study's configurations and ensembles of configurations scored so far (`STUDY_DIR/robustness/*.json`)."""
    folder = Path(study_dir) / STUDY_ROBUSTNESS_DIR
    if not folder.is_dir():
        return {}
    found = {}
    for path in sorted(folder.glob("*.json")):
        label, _, stem = path.stem.partition(".")
        if stem == ROBUSTNESS_STEM:
            found[label.replace("--", "/")] = read_robustness(folder, path.stem)
    return found


def study_robustness_section(robustness):
    """The "Robustness" section of a study's summary: per configuration's fold ensemble, the mean
    corrupted balanced accuracy and its ratio to clean, on validation (out of fold) and test."""
    if not robustness:
        return ""
    header = ["configuration"]
    for subset in SUBSETS:
        header += [f"{SUBSET_NAMES[subset]} clean", f"{SUBSET_NAMES[subset]} corrupted", "relative"]
    rows = []
    for label, benchmark in robustness.items():
        row = [label]
        for subset in SUBSETS:
            scores = benchmark["subsets"].get(subset)
            keys = ("clean_balanced_accuracy", "mean_corrupted_balanced_accuracy", "relative_balanced_accuracy")
            row += [format_value(None if scores is None else scores[key]) for key in keys]
        rows.append(row)
    worst = [
        (label, SUBSET_NAMES[subset], min(scores["corruptions"].items(), key=lambda item: item[1]["mean"]))
        for label, benchmark in robustness.items()
        for subset, scores in benchmark["subsets"].items()
        if subset == "test"
    ]
    note = "; ".join(f"{label}: {name.replace('_', ' ')} ({values['mean']:.3f})" for label, _, (name, values) in worst)
    return "\n\n".join(
        [
            "## Robustness",
            "Fold ensembles' balanced accuracy under the dermatology-specific corruptions of `dataset/corruptions.py` "
            f"(11 corruptions x 3 severities; validation pooled out of fold). Per corruption: [{STUDY_ROBUSTNESS_DIR}/](../{STUDY_ROBUSTNESS_DIR}/).",
            markdown_table(header, rows, align="l" + "r" * (len(header) - 1)),
            *([f"Worst corruption on test: {note}."] if note else []),
        ]
    )
