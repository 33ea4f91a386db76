"""The run folder: where one training run leaves everything a reader needs to trust its numbers.

    <output_dir>/runs/<YYYYmmdd-HHMMSS>-<model>[-meta]/
        config.yaml  split.csv  environment.json  history.csv  training.json  model.keras
        metadata_encoder.json (hybrid head)  predictions.csv  metrics.json  *.png  report.md
        val_predictions.csv (the validation subset, or a K-fold study run's validation fold)
        calibration.json (the temperature and conformal thresholds fitted on val_predictions.csv)
        calibrated_predictions.csv (predictions.csv with the temperature applied)
        gallery/ (Grad-CAM thumbnails of the test subset)
        robustness.json, robustness.npz (`main.py robustness`, or `robustness: true`: the corruption benchmark)
        tta/, size-<N>px/, external/<data>/ (`main.py evaluate` with --tta, --image-size, --data-dir)
        checkpoint/ (while training: the last epoch's model and state, for --resume)
        run.lock (while a process trains in the folder: its id and machine)
        tensorboard/ (TensorBoard's logs)

This module owns the layout: the file names, the history's columns, and the helpers that make,
lock and read the folder. Training writes it, evaluation and inference read it, and neither
imports the other for it.
"""

import contextlib
import json
import os
import socket
from pathlib import Path

import pandas as pd
import yaml

from common.errors import DataError, UserError
from common.files import new_stamped_folder, process_alive, write_csv
from common.tables import read_csv, require_columns

CONFIG_FILENAME = "config.yaml"
SPLIT_FILENAME = "split.csv"
ENVIRONMENT_FILENAME = "environment.json"
HISTORY_FILENAME = "history.csv"
TRAINING_FILENAME = "training.json"  # the training summary: best epoch, wall time, parameters, ...
MODEL_FILENAME = "model.keras"  # the kept epoch's model, without optimizer state
ENCODER_FILENAME = "metadata_encoder.json"
PREDICTIONS_FILENAME = "predictions.csv"
# A fold run's validation fold, predicted by its kept model: the study's out-of-fold metrics.
VAL_PREDICTIONS_FILENAME = "val_predictions.csv"
METRICS_FILENAME = "metrics.json"
# Fitted on the validation predictions by the evaluation, written once and then read: the temperature
# and the conformal thresholds that `predict` and `serve` apply.
CALIBRATION_FILENAME = "calibration.json"
# predictions.csv with the temperature applied (the raw file is kept as it is).
CALIBRATED_PREDICTIONS_FILENAME = "calibrated_predictions.csv"
REPORT_FILENAME = "report.md"
# The report's Grad-CAM thumbnails (inference.gallery) and their list.
GALLERY_DIR = "gallery"
GALLERY_FILENAME = "gallery.json"  # in GALLERY_DIR
# The test subset again with test-time augmentation, beside the plain evaluation (never instead):
# predictions, metrics, plots and report, as in the run folder.
TTA_DIR = "tta"
CHECKPOINT_DIR = "checkpoint"
STATE_FILENAME = "state.json"  # in CHECKPOINT_DIR: what a resumed run trusts
LOCK_FILENAME = "run.lock"
TENSORBOARD_DIR = "tensorboard"  # TensorBoard's event files, train/ and validation/

# history.csv, one row per epoch: where the epoch stands, then what Keras measured.
# input_share: the share of the training phase the input pipeline needed (`training.diagnostics.input_bound`).
EPOCH_COLUMNS = ("epoch", "stage", "lr", "seconds", "input_share")
METRIC_COLUMNS = ("loss", "accuracy", "balanced_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy")
HISTORY_COLUMNS = EPOCH_COLUMNS + METRIC_COLUMNS
# Measured with a clock: they differ between two runs of the same settings, as nothing else does.
TIMING_COLUMNS = ("seconds", "input_share")
# What a reader of the history needs: the training curves.
CURVE_COLUMNS = ("epoch", *METRIC_COLUMNS)


def create_run_dir(output_dir, name, now=None):
    """Makes a new, empty run folder; never reuses an existing one.

    Two runs started in the same second get the suffixes "-2", "-3", ...
    """
    return new_stamped_folder(Path(output_dir) / "runs", name, now)


@contextlib.contextmanager
def run_lock(run_dir, what="run"):
    """Holds the run folder for this process: a second process training into it is refused.

    The lock file names the process and machine that hold it. A lock left by a process that has
    died on this machine (killed, out of memory) is stale and taken over. A study holds its own
    folder the same way (`what="study"`).

    Raises:
        UserError: another live process, or a process on another machine, holds the folder.
    """
    path = Path(run_dir) / LOCK_FILENAME
    host = socket.gethostname()
    while True:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder_pid, _, holder_host = path.read_text().strip().partition(" ")
            # An empty lock is one whose writer died between creating and writing it.
            if not holder_pid.isdigit() or (holder_host == host and not process_alive(int(holder_pid))):
                path.unlink(missing_ok=True)
                continue
            raise UserError(
                f"{run_dir}: process {holder_pid} on {holder_host} is training this {what}; wait for it to end "
                f"(if that process is gone, delete {path})"
            ) from None
        with os.fdopen(descriptor, "w") as lock:
            lock.write(f"{os.getpid()} {host}\n")
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def existing_run_dir(run_dir):
    """`run_dir` as a Path; DataError if there is no such folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run folder not found")
    return run_dir


def read_config(run_dir):
    """The run's resolved training configuration (`config.yaml`) as a dict; {} if absent."""
    return _read_mapping(Path(run_dir) / CONFIG_FILENAME, yaml.safe_load, yaml.YAMLError)


def read_training_summary(run_dir):
    """The run's training summary (`training.json`); {} if absent (training has not finished)."""
    return _read_mapping(Path(run_dir) / TRAINING_FILENAME, json.loads, json.JSONDecodeError)


def read_history(run_dir):
    """The run's `history.csv`, one row per epoch; None if absent.

    Raises:
        DataError: the file is malformed or lacks a column of the training curves.
    """
    path = Path(run_dir) / HISTORY_FILENAME
    if not path.is_file():
        return None
    history = read_csv(path, "history file not found", as_text=False)
    require_columns(history, CURVE_COLUMNS, path, hint=f"expected {', '.join(CURVE_COLUMNS)}, ...")
    return history


def write_history(run_dir, rows):
    """Writes the epochs' rows (dicts with the `HISTORY_COLUMNS`) as the run's `history.csv`."""
    write_csv(Path(run_dir) / HISTORY_FILENAME, pd.DataFrame(rows, columns=HISTORY_COLUMNS))


def _read_mapping(path, parse, parse_error):
    """A YAML or JSON file holding one mapping; {} if the file is absent."""
    if not path.is_file():
        return {}
    try:
        content = parse(path.read_text(encoding="utf-8"))
    except parse_error as error:
        first_line = str(error).strip().splitlines()[0]
        raise DataError(f"{path}: not readable ({first_line})") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a mapping of settings, found {type(content).__name__}")
    return content
