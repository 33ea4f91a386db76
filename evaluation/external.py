"""Evaluating a trained run's model, or a study configuration's fold ensemble, on another labelled
image set (ISIC 2018, a clinic's own images).

    from evaluation import evaluate_external
    evaluate_external("results/runs/20250101-120000-densenet", "data/isic2018-test",
                      labels_path="data/isic2018-test/ISIC2018_Task3_Test_GroundTruth.csv")
    evaluate_external("results/studies/20261125-010000-all-3folds/densenet", "data/isic2018-test", ...)

Images go through the same decoder and cache as in training, so any size or aspect reaches the
model exactly as HAM10000's did; metadata goes through the encoder saved with the run, fitted on
its training subset. The results land in `<run>/external/<data folder name>/`, or a study's
`<study>/external/<configuration>/<data folder name>/`. The clinical sections come with them: the
run's temperature, conformal thresholds and operating points (fitted on its validation predictions;
an ensemble's on its fold runs' pooled out-of-fold ones), and subgroups where the labels file gives
the images' age, sex or site.
"""

from pathlib import Path

import numpy as np

from common.errors import DataError
from common.files import new_folder
from common.run_folder import PREDICTIONS_FILENAME, TTA_DIR
from common.study_folder import finished_runs
from dataset.cache import load_images
from dataset.images import locate_images
from dataset.metadata import METADATA_FILENAME, UNKNOWN, class_indices
from evaluation.clinical import POOLED_SOURCE, ClinicalInputs
from evaluation.configuration_ensemble import CONFIGURATION_SEPARATOR
from evaluation.labels import read_labels
from evaluation.metrics import BOOTSTRAP_DRAWS
from evaluation.predictions import predictions_frame, write_predictions
from evaluation.predictor import Predictor
from evaluation.report import class_counts, write_evaluation
from evaluation.run_files import RunFiles, read_run_files
from evaluation.study import pooled_out_of_fold

EXTERNAL_DIR = "external"


def evaluate_external(
    run_dir,
    data_dir,
    labels_path=None,
    output_dir=None,
    *,
    batch_size=32,
    cache_dir=None,
    drop_missing=False,
    bootstrap_draws=BOOTSTRAP_DRAWS,
    seed=0,
    tta=False,
    image_size=None,
    verbose=True,
):
    """Predicts a labelled image set with a run's model (or a study configuration's fold ensemble)
    and writes a full evaluation of it.

    Writes `predictions.csv`, `metrics.json`, the plots (no training curves), the clinical
    evaluation (`calibrated_predictions.csv` and its plots) and `report.md`; with `tta`, the same
    but the clinical evaluation again for test-time-augmented predictions in its `tta/` folder.

    Args:
        run_dir: the trained run's folder, with `model.keras` (and `metadata_encoder.json` if
            the model takes metadata); or a study's configuration, `STUDY_DIR/<configuration>`
            (its fold ensemble), or ensemble of configurations (`STUDY_DIR/<a>+<b>`, `STUDY_DIR/ensemble`).
        data_dir: the images: a flat folder, HAM10000's `images/` or part_1/part_2 folders, or
            loose files; an image's id is its file name without suffix.
        labels_path: the true classes (`read_labels` formats); default
            `data_dir/HAM10000_metadata.csv`. Metadata columns it lacks encode as unknown.
        output_dir: where to write; default `run_dir/external/<data_dir name>` (a study's:
            `STUDY_DIR/external/<configuration>/<data_dir name>`). An existing
            folder is never written into: "-2", "-3", ... is appended instead.
        batch_size, cache_dir: images per prediction batch; the decoded-image cache (default as in training).
        drop_missing: leave out, with a warning, labelled images that are missing or cannot be
            decoded, instead of stopping.
        bootstrap_draws, seed: resamples of the images for the confidence intervals, and their seed.
        tta: also evaluate the mean prediction over the eight rotations and reflections of each
            image, beside the plain one.
        image_size: predict at this image size instead of the training size (test-time resolution).
        verbose: print the cache's and the model's progress, and where the results went.

    Returns:
        The metrics (the content of `metrics.json`); with `tta`, those of `tta/metrics.json` under "tta".

    Raises:
        DataError: the model, the labels, an image or the metadata encoder is missing or malformed.
    """
    # Every input is checked before the model runs, so that a bad file fails in seconds.
    data_dir, labels_path = external_paths(data_dir, labels_path)
    labels = read_labels(labels_path)
    predictor = Predictor.load(run_dir, image_size=image_size)
    # A study's configuration reports as itself, not as one of its runs.
    run = read_run_files(run_dir) if predictor.configuration is None else RunFiles(name=predictor.name)
    ensemble = predictor.configuration is not None and len(predictor.members) > 1
    image_paths = locate_images(list(labels["image_id"]), data_dir, drop_missing=drop_missing)
    cache = load_images(
        image_paths, predictor.image_size, cache_dir=cache_dir, drop_unreadable=drop_missing, verbose=verbose
    )
    rows = labels.set_index("image_id").loc[list(cache.image_ids)].reset_index()
    options = {"rows": cache.rows(rows["image_id"]), "batch_size": batch_size, "verbose": "auto" if verbose else 0}
    test_set = f"{len(rows):,} images of {data_dir}, labels from {labels_path}" + (
        f" ({len(labels) - len(rows):,} labelled images left out: missing or unreadable)"
        if len(labels) > len(rows)
        else ""
    )
    evaluated = f"{predictor.name}, the mean of its {len(predictor.members)} runs," if ensemble else run.name
    title = f"External evaluation of {evaluated} on {data_dir.name}"
    report = {"title": title, "test_set": test_set, "run": run, "bootstrap_draws": bootstrap_draws, "seed": seed}

    probabilities = predictor.predict(cache.images, rows, **options)
    if output_dir is None:
        output_dir = (
            Path(run_dir) / EXTERNAL_DIR
            if predictor.configuration is None
            else predictor.folder / EXTERNAL_DIR / predictor.configuration
        )
        output_dir = output_dir / (
            data_dir.name + (f"-{image_size}px" if image_size and image_size != predictor.trained_image_size else "")
        )
    output_dir = new_folder(output_dir)
    clinical = external_clinical_inputs(predictor, rows, output_dir, ensemble)
    metrics = write_external_evaluation(output_dir, rows, probabilities, clinical=clinical, **report)
    if tta:
        metrics["tta"] = write_external_evaluation(
            new_folder(output_dir / TTA_DIR),
            rows,
            predictor.predict(cache.images, rows, tta=True, **options),
            **{
                **report,
                "title": f"{title} with test-time augmentation",
                "test_set": test_set + "; each image predicted as the mean of its eight rotations and reflections",
            },
        )
    if verbose:
        print(f"Wrote the evaluation on {data_dir.name} to {output_dir}")
    return metrics


def external_paths(data_dir, labels_path):
    """The image folder, resolved, and the labels file: `labels_path`, else the folder's HAM10000 metadata.

    Raises:
        DataError: the folder does not exist, or no labels file is given and it has no metadata file.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: image folder not found")
    if labels_path is None:
        labels_path = data_dir / METADATA_FILENAME
        if not labels_path.is_file():
            raise DataError(
                f"{data_dir} has no {METADATA_FILENAME}: pass its labels file "
                "(HAM10000 metadata or ISIC 2018 ground-truth format)"
            )
    return data_dir, labels_path


def external_clinical_inputs(predictor, rows, output_dir, ensemble):
    """The clinical evaluation's inputs for the labelled `rows`: a run's validation predictions and
    calibration.json, or a fold ensemble's pooled out-of-fold validation predictions (its
    calibration.json fitted on them into `output_dir`, as the study summary fits its own); the
    images' age, sex and site where the labels file gives any of them."""
    known = rows["age"].notna().any() or rows["sex"].ne(UNKNOWN).any() or rows["localization"].ne(UNKNOWN).any()
    metadata = rows.loc[:, ["age", "sex", "localization"]].reset_index(drop=True) if known else None
    image_ids = rows["image_id"].tolist()
    if not ensemble:
        return ClinicalInputs.for_run(predictor.members[0].run_dir, image_ids, metadata)
    # An ensemble of configurations weighs each configuration's out-of-fold predictions alike, as it
    # weighs their test predictions.
    runs = finished_runs(predictor.folder)
    pooled = [
        pooled_out_of_fold([run for run in runs if run["configuration"] == configuration])
        for configuration in predictor.configuration.split(CONFIGURATION_SEPARATOR)
    ]
    validation = (
        None if any(part is None for part in pooled) else (pooled[0][0], np.mean([part[1] for part in pooled], axis=0))
    )
    return ClinicalInputs(tuple(image_ids), validation, POOLED_SOURCE, Path(output_dir), metadata)


def write_external_evaluation(folder, rows, probabilities, clinical=None, **report):
    """Writes the predictions of the labelled `rows` and their evaluation (`write_evaluation`) into `folder`."""
    y_true = class_indices(rows["dx"])
    write_predictions(folder / PREDICTIONS_FILENAME, predictions_frame(rows["image_id"], y_true, probabilities))
    return write_evaluation(
        folder,
        y_true,
        probabilities,
        data=("Images per class:", class_counts(rows["dx"], "images")),
        clinical=clinical,
        **report,
    )
