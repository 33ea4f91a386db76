"""Running a trained run's kept model: its class probabilities, and the test subset's `predictions.csv`.

The one part of evaluation that loads a model; everything else works from the files it writes.
"""

import sys
import zipfile
from pathlib import Path

import keras
import numpy as np

import networks  # also registers the custom layers that saved models refer to

from common.errors import DataError
from common.files import new_folder
from common.run_folder import MODEL_FILENAME, PREDICTIONS_FILENAME, TTA_DIR, VAL_PREDICTIONS_FILENAME
from dataset.augment import DIHEDRAL_TRANSFORMS
from dataset.metadata import CLASS_NAMES
from evaluation.predictions import predictions_frame, write_predictions


def load_run_model(run_dir):
    """The run's kept model (`model.keras`), uncompiled: for prediction only."""
    model_path = Path(run_dir) / MODEL_FILENAME
    if not model_path.is_file():
        raise DataError(f"{model_path}: model file not found (is {Path(run_dir).name} a finished training run?)")
    if not zipfile.is_zipfile(model_path):
        # Keras would call an empty, truncated or overwritten file "not found".
        raise DataError(f"{model_path}: damaged, not a .keras archive (copy the run's model.keras again, or train the run again)")
    return networks.let_augmentation_compile(keras.saving.load_model(model_path, compile=False))


def predict_probabilities(model, sequence, verbose=0, tta=False):
    """The model's class probabilities for every image of an evaluation sequence, in its order.

    Args:
        model: a classifier with a softmax output over the seven classes.
        sequence: an `evaluation_sequence` (each image once, in a fixed order).
        verbose: Keras's progress output; off by default. "auto": a bar on a terminal, one line
            at the end elsewhere (Keras's own "auto" writes the bar's carriage returns into log files).
        tta: test-time augmentation: the mean over the eight rotations and reflections of each
            image (the transforms training augments with), at eight times the cost.

    Returns:
        An (images, 7) float array.
    """
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    if tta:
        probabilities = _dihedral_mean(model, sequence)
    else:
        probabilities = np.asarray(model.predict(sequence, verbose=verbose))
    if probabilities.ndim != 2 or probabilities.shape[1] != len(CLASS_NAMES):
        raise ValueError(
            f"the model's output has shape {probabilities.shape}; expected (images, {len(CLASS_NAMES)}) "
            "class probabilities"
        )
    return probabilities


def predict_subset(run_dir, data, *, with_metadata, batch_size=32, workers=2, tta=False, subset="test"):
    """Predicts the test subset of a run's split (or `subset`) with its kept model and writes `predictions.csv`.

    With `subset="val"`, the validation subset instead, into `val_predictions.csv` (a fold run's
    out-of-fold predictions).

    Args:
        run_dir: a trained run's folder, with `model.keras`.
        data: the `dataset.PreparedData` the run trained on (its split and image size).
        with_metadata: whether the model takes the metadata input.
        batch_size, workers: of the prediction batches.
        tta: predict with test-time augmentation, into a new `tta/` folder of the run (`tta-2`,
            ... if there is one already) rather than the run's own `predictions.csv`.

    Returns:
        The path of the `predictions.csv` written.
    """
    rows, _, labels = data.subset(subset)
    images = data.sequence(subset, batch_size=batch_size, with_metadata=with_metadata, workers=workers)
    probabilities = predict_probabilities(load_run_model(run_dir), images, tta=tta)
    frame = predictions_frame(rows["image_id"].tolist(), labels, probabilities)
    folder = new_folder(Path(run_dir) / TTA_DIR) if tta else Path(run_dir)
    path = folder / (PREDICTIONS_FILENAME if subset == "test" else VAL_PREDICTIONS_FILENAME)
    write_predictions(path, frame)
    return path


def predict_batch(model, images, metadata=None, *, tta=False):
    """Class probabilities of one batch of decoded images (and their metadata input).

    Args:
        model: a classifier with an "image" (and optionally a "metadata") input.
        images: (n, size, size, 3) images, as the cache or `read_image` gives them.
        metadata: the (n, features) metadata input of a metadata model, else None.
        tta: the mean over the eight rotations and reflections of each image.

    Returns:
        An (n, 7) float array.
    """
    transforms = DIHEDRAL_TRANSFORMS if tta else DIHEDRAL_TRANSFORMS[:1]
    total = 0.0
    for transform in transforms:
        views = np.ascontiguousarray(transform(images))
        # predict_on_batch, not predict: no per-call data pipeline, so one image (a served
        # request) takes milliseconds, not tens of them.
        total = total + np.asarray(model.predict_on_batch(views if metadata is None else {"image": views, "metadata": metadata}))
    return total / len(transforms)


def _dihedral_mean(model, sequence):
    """Mean probabilities over the eight rotations and reflections of each image of `sequence`."""
    batches = []
    for index in range(len(sequence)):
        inputs, _ = sequence[index]
        images, metadata = inputs if isinstance(inputs, tuple) else (inputs, None)
        batches.append(predict_batch(model, images, metadata, tta=True))
    return np.concatenate(batches)
