"""Evaluating a trained run's model on another labelled image set (ISIC 2018, a clinic's own images).

    from evaluation import evaluate_external
    evaluate_external("results/runs/20250101-120000-densenet", "data/isic2018-test",
                      labels_path="data/isic2018-test/ISIC2018_Task3_Test_GroundTruth.csv")

Images go through the same decoder and cache as in training, so any size or aspect reaches the
model exactly as HAM10000's did; metadata goes through the encoder saved with the run, fitted on
its training subset. The results land in `<run>/external/<data folder name>/`.
"""

from pathlib import Path

from common.errors import DataError
from common.files import new_folder
from common.run_folder import ENCODER_FILENAME, MODEL_FILENAME, PREDICTIONS_FILENAME, TTA_DIR
from dataset.cache import load_images
from dataset.features import MetadataEncoder
from dataset.images import locate_images
from dataset.metadata import METADATA_FILENAME, class_indices
from dataset.sequence import evaluation_sequence
from evaluation.inference import load_run_model, predict_probabilities
from evaluation.labels import read_labels
from evaluation.metrics import BOOTSTRAP_DRAWS
from evaluation.predictions import predictions_frame, write_predictions
from evaluation.report import class_counts, write_evaluation
from evaluation.run_files import read_run_files

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
    verbose=True,
):
    """Predicts a labelled image set with a run's model and writes a full evaluation of it.

    Writes `predictions.csv`, `metrics.json`, the plots (no training curves) and `report.md`;
    with `tta`, the same again for test-time-augmented predictions in its `tta/` folder.

    Args:
        run_dir: the trained run's folder, with `model.keras` (and `metadata_encoder.json` if
            the model takes metadata).
        data_dir: the images: a flat folder, HAM10000's `images/` or part_1/part_2 folders, or
            loose files; an image's id is its file name without suffix.
        labels_path: the true classes (`read_labels` formats); default
            `data_dir/HAM10000_metadata.csv`. Metadata columns it lacks encode as unknown.
        output_dir: where to write; default `run_dir/external/<data_dir name>`. An existing
            folder is never written into: "-2", "-3", ... is appended instead.
        batch_size: images per prediction batch.
        cache_dir: the decoded-image cache; default as in training.
        drop_missing: leave out, with a warning, labelled images that are missing or cannot be
            decoded, instead of stopping.
        bootstrap_draws: resamples of the images for the confidence intervals.
        seed: fixes the resamples.
        tta: also evaluate the mean prediction over the eight rotations and reflections of each
            image, beside the plain one.
        verbose: print the cache's and the model's progress, and where the results went.

    Returns:
        The metrics (the content of `metrics.json`); with `tta`, those of `tta/metrics.json` under "tta".

    Raises:
        DataError: the model, the labels, an image or the metadata encoder is missing or malformed.
    """
    # Every input is checked before the model runs, so that a bad file fails in seconds.
    run = read_run_files(run_dir)
    run_dir = Path(run_dir)
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
    labels = read_labels(labels_path)
    model = load_run_model(run_dir)
    image_size, metadata_features = model_inputs(model, run_dir / MODEL_FILENAME)

    image_paths = locate_images(list(labels["image_id"]), data_dir, drop_missing=drop_missing)
    cache = load_images(image_paths, image_size, cache_dir=cache_dir, drop_unreadable=drop_missing, verbose=verbose)
    rows = labels.set_index("image_id").loc[list(cache.image_ids)].reset_index()
    y_true = class_indices(rows["dx"])
    metadata = encode_metadata(run_dir, rows, metadata_features) if metadata_features else None
    sequence = evaluation_sequence(
        cache.images, cache.rows(rows["image_id"]), y_true, metadata=metadata, batch_size=batch_size
    )
    probabilities = predict_probabilities(model, sequence, verbose="auto" if verbose else 0)

    output_dir = new_folder(Path(output_dir) if output_dir is not None else run_dir / EXTERNAL_DIR / data_dir.name)
    write_predictions(output_dir / PREDICTIONS_FILENAME, predictions_frame(rows["image_id"], y_true, probabilities))
    left_out = len(labels) - len(rows)
    test_set = f"{len(rows):,} images of {data_dir}, labels from {labels_path}" + (
        f" ({left_out:,} labelled images left out: missing or unreadable)" if left_out else ""
    )
    metrics = write_evaluation(
        output_dir, y_true, probabilities,
        title=f"External evaluation of {run.name} on {data_dir.name}",
        test_set=test_set, run=run,
        data=("Images per class:", class_counts(rows["dx"], "images")),
        bootstrap_draws=bootstrap_draws, seed=seed,
    )
    if tta:
        tta_dir = new_folder(output_dir / TTA_DIR)
        tta_probabilities = predict_probabilities(model, sequence, tta=True)
        write_predictions(tta_dir / PREDICTIONS_FILENAME, predictions_frame(rows["image_id"], y_true, tta_probabilities))
        metrics["tta"] = write_evaluation(
            tta_dir, y_true, tta_probabilities,
            title=f"External evaluation of {run.name} on {data_dir.name} with test-time augmentation",
            test_set=test_set + "; each image predicted as the mean of its eight rotations and reflections",
            run=run, data=("Images per class:", class_counts(rows["dx"], "images")),
            bootstrap_draws=bootstrap_draws, seed=seed,
        )
    if verbose:
        print(f"Wrote the evaluation on {data_dir.name} to {output_dir}")
    return metrics


def model_inputs(model, source):
    """The side of the square images a model takes, and the length of its metadata input (0 if none).

    Args:
        model: a classifier from `networks`: an image input, and optionally one named "metadata".
        source: the model file, for error messages.
    """
    images = [tensor for tensor in model.inputs if len(tensor.shape) == 4]
    metadata = [tensor for tensor in model.inputs if tensor.name == "metadata"]
    if len(images) != 1 or len(model.inputs) != 1 + len(metadata):
        shapes = ", ".join(f"{tensor.name} {tuple(tensor.shape)}" for tensor in model.inputs)
        raise DataError(f"{source}: expected one image input and at most a 'metadata' input; the model takes {shapes}")
    _, height, width, _ = images[0].shape
    if height is None or height != width:
        raise DataError(f"{source}: the image input has shape {tuple(images[0].shape)}; expected a fixed square size")
    return height, metadata[0].shape[-1] if metadata else 0


def encode_metadata(run_dir, rows, features):
    """The metadata vectors of `rows`, encoded as in training by the run's saved encoder."""
    return load_encoder(run_dir, features).transform(rows)


def load_encoder(run_dir, features):
    """The run's saved `MetadataEncoder`, checked against the model's metadata input length."""
    encoder_path = Path(run_dir) / ENCODER_FILENAME
    if not encoder_path.is_file():
        raise DataError(f"{encoder_path}: not found; the model takes metadata, and training saves its encoder there")
    encoder = MetadataEncoder.load(encoder_path)
    if encoder.size != features:
        raise DataError(f"{encoder_path} encodes {encoder.size} metadata features, but the model takes {features}")
    return encoder
