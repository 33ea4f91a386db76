"""Predicting with trained models: a run's, or the fold ensemble of one of a study's configurations.

    from evaluation.predictor import Predictor
    predictor = Predictor.load("results/runs/20261123-101500-densenet")         # one run's model
    predictor = Predictor.load("results/studies/20261125-010000-all-3folds/densenet")   # its 3 fold models
    predictor = Predictor.load("results/studies/20261125-010000-all-3folds/cnn+densenet")   # two configurations' fold ensembles
    predictor = Predictor.load("results/runs/20261123-101500-densenet", image_size=160)   # at a larger test-time size
    probabilities = predictor.predict(images, metadata, tta=True)                # (n, 7)

The one place that runs a trained model: the test and validation subsets' `predictions.csv`
(`predict_subset`), external test sets, the gallery, `main.py predict` and the server all go
through `Predictor`. It loads each model once and gives it its inputs as training did: the images
as float32 batches, and the metadata encoded by the encoder saved with the run (fitted on its
training subset), so that each fold model encodes the metadata as it was trained to. An ensemble's
probabilities are the mean of its models', as the study's summary averages them; an ensemble of
configurations (`evaluation.configuration_ensemble`) weighs each configuration's fold ensemble alike.
"""

import json
import math
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

import networks  # also registers the custom layers that saved models refer to
from common.errors import DataError
from common.files import new_folder
from common.run_folder import (
    ENCODER_FILENAME,
    METRICS_FILENAME,
    MODEL_FILENAME,
    PREDICTIONS_FILENAME,
    TTA_DIR,
    VAL_PREDICTIONS_FILENAME,
)
from common.study_folder import SUMMARY_DIR, finished_runs, is_study_dir, read_study
from dataset.augment import DIHEDRAL_TRANSFORMS
from dataset.features import MetadataEncoder
from dataset.metadata import CLASS_DESCRIPTIONS, CLASS_NAMES, UNKNOWN
from evaluation.catalogue import CARD, keys_shown
from evaluation.configuration_ensemble import CONFIGURATION_SEPARATOR, resolve_configurations
from evaluation.predictions import predictions_frame, write_predictions
from evaluation.run_files import read_run_files
from evaluation.study import ENSEMBLES_DIR
from networks.resolution import with_image_size

BATCH_SIZE = 32


@dataclass(frozen=True)
class RunModel:
    """One trained run's model, with its folder, input size and metadata encoder (None for an image-only model)."""

    run_dir: Path
    model: object
    image_size: int
    encoder: MetadataEncoder | None
    trained_image_size: int | None = None  # where the model was rebuilt for another size

    @classmethod
    def load(cls, run_dir, image_size=None):
        """Loads a run's model and metadata encoder; with `image_size`, the model rebuilt to take
        images of that size (`networks.resolution`) instead of its training size.

        Raises:
            DataError: the folder, its `model.keras`, or the encoder a metadata model needs is
                missing or malformed; the model cannot take `image_size`.
        """
        run_dir = Path(run_dir)
        read_run_files(run_dir)  # checks that the folder exists and its files are readable
        model = load_run_model(run_dir)
        trained_size, metadata_features = model_inputs(model, run_dir / MODEL_FILENAME)
        if image_size is not None and image_size != trained_size:
            try:
                model = with_image_size(model, image_size)
            except ValueError as error:
                raise DataError(f"{run_dir / MODEL_FILENAME}: {error}") from None
        image_size, _ = model_inputs(model, run_dir / MODEL_FILENAME)
        encoder = load_encoder(run_dir, metadata_features) if metadata_features else None
        return cls(run_dir, model, image_size, encoder, trained_size)

    def encode(self, metadata, count):
        """The model's metadata input for `count` images: `metadata` rows, or all unknown; None for an image-only model."""
        if self.encoder is None:
            return None
        if metadata is None:
            metadata = pd.DataFrame({"age": np.full(count, np.nan), "sex": UNKNOWN, "localization": UNKNOWN})
        return self.encoder.transform(metadata)


@dataclass(frozen=True)
class Predictor:
    """Trained models loaded once, predicting as one: a run's model, or a study configuration's
    runs (its folds, and seeds), whose probabilities are averaged.

    Attributes:
        name: the run folder's name, or "<study folder>/<configuration>".
        folder: the run folder, or the study folder.
        members: a `RunModel` per run.
        configuration: the study's configuration ("a+b" for an ensemble of configurations), None for a run.
        weights: each member's weight in the mean (they sum to 1); None: all alike.
        planned: the runs the study plans for the configuration (more than `members` while some
            are unfinished); None for a run.
        unit: what the configuration's runs are, in messages: "fold models" or "seed models".
    """

    name: str
    folder: Path
    members: tuple
    configuration: str | None = None
    weights: tuple | None = None
    planned: int | None = None
    unit: str = "models"

    @classmethod
    def load(cls, path, image_size=None):
        """Loads a run folder, or a study's configuration: `STUDY_DIR/<configuration>`, or
        `STUDY_DIR` alone where the study has one configuration; or an ensemble of a study's
        configurations, `STUDY_DIR/<configuration>+<configuration>...`, or `STUDY_DIR/ensemble`,
        the one its summary chose on out-of-fold validation (`evaluation.configuration_ensemble`).

        Args:
            path: as above.
            image_size: the side of the images to predict, where it is not the one the models
                trained at (test-time resolution, `networks.resolution`); None: their own.

        A configuration some of whose runs have not finished predicts with those that have, and
        warns, in one line, how many of how many that is.

        Raises:
            DataError: the folder is neither a run nor (a configuration of) a study; a study's
                configuration is not named where it has several, or has no finished run; a model
                or encoder is missing or malformed; the models take different inputs.
        """
        path = Path(path)
        if is_study_dir(path):
            study_dir, configuration = path, None
        elif is_study_dir(path.parent) and not (path / MODEL_FILENAME).exists():
            study_dir, configuration = path.parent, path.name
        else:
            return cls(path.resolve().name, path, (RunModel.load(path, image_size),))
        configurations = resolve_configurations(study_dir, configuration)
        members, weights, planned_runs = [], [], []
        for name in configurations:
            name, run_dirs, planned = study_configuration(study_dir, name)
            members += [RunModel.load(run_dir, image_size) for run_dir in run_dirs]
            planned_runs += planned
            # Each configuration's fold ensemble counts alike, however many runs it has.
            weights += [1 / (len(configurations) * len(run_dirs))] * len(run_dirs)
        configuration = CONFIGURATION_SEPARATOR.join(configurations) if configuration is not None else name
        # An image-only model beside a metadata one is fine (each takes what it needs); one set
        # of images of one size is fed to all.
        sizes = sorted({member.image_size for member in members})
        if len(sizes) > 1:
            raise DataError(
                f"{study_dir}: the runs of {configuration} take images of different sizes ({', '.join(map(str, sizes))} px); they cannot be averaged"
            )
        unit = "fold models" if any(run["fold"] is not None for run in planned_runs) else "seed models"
        predictor = cls(
            f"{study_dir.resolve().name}/{configuration}",
            study_dir,
            tuple(members),
            configuration,
            tuple(weights),
            len(planned_runs),
            unit,
        )
        if predictor.incomplete:
            warnings.warn(f"{predictor.name}: {predictor.incomplete}", stacklevel=2)
        return predictor

    @property
    def incomplete(self):
        """ "predicting with 1 of 2 fold models (...)" where some of the configuration's runs have not finished; else None."""
        if self.planned is None or len(self.members) >= self.planned:
            return None
        return f"predicting with {len(self.members)} of {self.planned} {self.unit}, those finished (the others are training or stopped: the ensemble is incomplete)"

    @property
    def model_count(self):
        """How many models answer (an export's, and `inference.exported.ExportedModel`'s, alike)."""
        return len(self.members)

    @property
    def image_size(self):
        return self.members[0].image_size

    @property
    def trained_image_size(self):
        """The image size the models trained at (that of the first, where they differ)."""
        return self.members[0].trained_image_size or self.image_size

    @property
    def takes_metadata(self):
        return any(member.encoder is not None for member in self.members)

    @property
    def sexes(self):
        """The sexes some model knows (any other encodes as unknown); empty for image-only models."""
        return known_values(member.encoder.sexes for member in self.members if member.encoder)

    @property
    def sites(self):
        """The anatomical sites some model knows (any other encodes as unknown); empty for image-only models."""
        return known_values(member.encoder.sites for member in self.members if member.encoder)

    @property
    def calibration_dir(self):
        """The folder whose `calibration.json` calibrates these probabilities: the run's (fitted on its
        validation predictions); for a study configuration of several runs, its ensemble's folder in
        the study summary (fitted there on the members' pooled out-of-fold validation predictions)."""
        if len(self.members) == 1:
            return self.members[0].run_dir
        return self.folder / SUMMARY_DIR / ENSEMBLES_DIR / self.configuration.replace("/", "--")

    def describe(self):
        """The name, architecture, input, classes and test metrics, for people and the API."""
        config = read_run_files(self.members[0].run_dir).config
        if self.configuration is None:
            metrics_path = self.members[0].run_dir / METRICS_FILENAME
        else:
            metrics_path = (
                self.folder / SUMMARY_DIR / ENSEMBLES_DIR / self.configuration.replace("/", "--") / METRICS_FILENAME
            )
        # The test metrics are those of the training size, not of another one the models were rebuilt for.
        metrics = (
            json.loads(metrics_path.read_text())
            if metrics_path.is_file() and self.image_size == self.trained_image_size
            else {}
        )
        return {
            "run": self.name,
            # An ensemble of configurations has several architectures: it names them all.
            "architecture": self.configuration
            if CONFIGURATION_SEPARATOR in (self.configuration or "")
            else config.get("model", self.members[0].model.name),
            "models": len(self.members),
            "planned_models": self.planned or len(self.members),
            "metadata": self.takes_metadata,
            "image_size": self.image_size,
            "classes": [{"code": name, "name": CLASS_DESCRIPTIONS[name]} for name in CLASS_NAMES],
            "sexes": list(self.sexes),
            "sites": list(self.sites),
            "test_metrics": {key: metrics[key] for key in keys_shown(CARD) if key in metrics},
        }

    def predict(self, images, metadata=None, *, rows=None, tta=False, batch_size=BATCH_SIZE, verbose=0):
        """Class probabilities of decoded images, the mean over the models.

        Args:
            images: (n, size, size, 3) RGB images as `read_image` or the image cache gives them.
            metadata: for metadata models, a table with `age, sex, localization`, one row per
                predicted image (NaN / "unknown" where missing), or None for all unknown. Image-only
                models ignore it.
            rows: the rows of `images` to predict, in order; default all. With the memory-mapped
                cache, only these are read, a batch at a time.
            tta: average over the eight rotations and reflections of each image, the transforms
                training augments with, at eight times the cost.
            batch_size: images per batch.
            verbose: a progress bar; "auto": a bar on a terminal, one line at the end elsewhere
                (Keras's own "auto" writes the bar's carriage returns into log files).

        Returns:
            An (n, 7) float array, columns in `CLASS_NAMES` order.
        """
        rows = np.arange(len(images)) if rows is None else np.asarray(rows)
        if verbose == "auto":
            verbose = 1 if sys.stdout.isatty() else 2
        steps = math.ceil(len(rows) / batch_size)
        progress = keras.utils.Progbar(steps * len(self.members), verbose=verbose) if verbose else None
        probabilities = [
            predict_batches(
                member.model, member_batches(member, images, rows, metadata, batch_size), tta=tta, progress=progress
            )
            for member in self.members
        ]
        return np.average(probabilities, axis=0, weights=self.weights)


def study_configuration(study_dir, configuration):
    """(the configuration, its finished runs' folders, its planned runs as `study.json` lists them)
    of a study; `configuration` None where it has one.

    Raises:
        DataError: naming the configurations, where `configuration` is not one of them, is None
            and there are several, or has no finished run.
    """
    runs = finished_runs(study_dir)
    configurations = list(dict.fromkeys(run["configuration"] for run in runs))
    if not configurations:
        raise DataError(
            f"{study_dir}: no finished run to predict with yet (wait for its first run if it is training; if it has stopped, continue it with --resume)"
        )
    if configuration is None and len(configurations) > 1:
        raise DataError(
            f"{study_dir} holds {len(configurations)} configurations ({', '.join(configurations)}): "
            f"name one, as in {study_dir / configurations[0]}"
        )
    configuration = configuration or configurations[0]
    if configuration not in configurations:
        raise DataError(
            f"{study_dir} has no finished run of a configuration {configuration!r} (it holds {', '.join(configurations)})"
        )
    planned = [run for run in read_study(study_dir)["runs"] if run["configuration"] == configuration]
    return configuration, [run["run_dir"] for run in runs if run["configuration"] == configuration], planned


def member_batches(member, images, rows, metadata, batch_size):
    """A model's input batches: float32 images as training fed them, with the metadata its encoder makes."""
    features = member.encode(metadata, len(rows))
    for start in range(0, len(rows), batch_size):
        batch = np.asarray(images[rows[start : start + batch_size]], dtype=np.float32)
        yield batch if features is None else (batch, features[start : start + batch_size])


def predict_batches(model, batches, *, tta=False, progress=None):
    """A model's class probabilities over batches of its inputs (images, or (images, metadata)), in order.

    With `tta`, each image's mean over its eight rotations and reflections.

    Raises:
        ValueError: the model's output is not (images, 7) class probabilities.
    """
    transforms = DIHEDRAL_TRANSFORMS if tta else DIHEDRAL_TRANSFORMS[:1]
    probabilities = []
    for inputs in batches:
        images, metadata = inputs if isinstance(inputs, tuple) else (inputs, None)
        total = 0.0
        for transform in transforms:
            views = np.ascontiguousarray(transform(images))
            # predict_on_batch, not predict: no per-call data pipeline, so one image (a served
            # request) takes milliseconds, not tens of them.
            total = total + np.asarray(
                model.predict_on_batch(views if metadata is None else {"image": views, "metadata": metadata})
            )
        probabilities.append(total / len(transforms))
        if progress is not None:
            progress.add(1)
    probabilities = np.concatenate(probabilities) if probabilities else np.zeros((0, len(CLASS_NAMES)))
    if probabilities.ndim != 2 or probabilities.shape[1] != len(CLASS_NAMES):
        raise ValueError(
            f"the model's output has shape {probabilities.shape}; expected (images, {len(CLASS_NAMES)}) class probabilities"
        )
    return probabilities


def predict_subset(run_dir, data, *, batch_size=32, tta=False, subset="test", predictor=None):
    """Predicts the test subset of a run's split (or `subset`) with its kept model and writes `predictions.csv`.

    With `subset="val"`, the validation subset instead, into `val_predictions.csv` (what the
    temperature and conformal thresholds are fitted on; a fold run's out-of-fold predictions).

    Args:
        run_dir: a trained run's folder, with `model.keras`.
        data: the `dataset.PreparedData` the run trained on (its split, image cache and metadata).
        batch_size: of the prediction batches.
        tta: predict with test-time augmentation, into a new `tta/` folder of the run (`tta-2`,
            ... if there is one already) rather than the run's own `predictions.csv`.
        predictor: the run's `Predictor`, where the caller has loaded it already; else it is loaded.

    Returns:
        The path of the `predictions.csv` written.
    """
    rows, cache_rows, labels = data.subset(subset)
    predictor = predictor or Predictor.load(run_dir)
    probabilities = predictor.predict(data.cache.images, rows, rows=cache_rows, tta=tta, batch_size=batch_size)
    frame = predictions_frame(rows["image_id"].tolist(), labels, probabilities)
    folder = new_folder(Path(run_dir) / TTA_DIR) if tta else Path(run_dir)
    path = folder / (PREDICTIONS_FILENAME if subset == "test" else VAL_PREDICTIONS_FILENAME)
    write_predictions(path, frame)
    return path


def load_run_model(run_dir):
    """The run's kept model (`model.keras`), uncompiled: for prediction only."""
    model_path = Path(run_dir) / MODEL_FILENAME
    if not model_path.is_file():
        raise DataError(f"{model_path}: model file not found (is {Path(run_dir).name} a finished training run?)")
    if not zipfile.is_zipfile(model_path):
        # Keras would call an empty, truncated or overwritten file "not found".
        raise DataError(
            f"{model_path}: damaged, not a .keras archive (copy the run's model.keras again, or train the run again)"
        )
    return networks.let_augmentation_compile(keras.saving.load_model(model_path, compile=False))


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


def load_encoder(run_dir, features):
    """The run's saved `MetadataEncoder`, checked against the model's metadata input length."""
    encoder_path = Path(run_dir) / ENCODER_FILENAME
    if not encoder_path.is_file():
        raise DataError(f"{encoder_path}: not found; the model takes metadata, and training saves its encoder there")
    encoder = MetadataEncoder.load(encoder_path)
    if encoder.size != features:
        raise DataError(f"{encoder_path} encodes {encoder.size} metadata features, but the model takes {features}")
    return encoder


def known_values(categories):
    """Several encoders' categories merged: each value once, sorted, "unknown" last (as one encoder orders them)."""
    categories = list(categories)
    if not categories:
        return ()
    return tuple(sorted(set().union(*categories) - {UNKNOWN})) + (UNKNOWN,)
