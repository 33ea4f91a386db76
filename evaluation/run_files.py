"""Reading what training left in a run folder (the layout is described in `training/run_dir.py`).

Evaluation reads these files rather than importing `training`. Only `predictions.csv` is
required to evaluate a run; the others add the configuration, the training curves and the split
to the report when they are there.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import keras
import pandas as pd
import yaml

import networks  # noqa: F401  (registers the custom layers that saved models refer to)

from dataset.errors import DataError
from dataset.split import load_split
from dataset.tables import read_csv

CONFIG_FILENAME = "config.yaml"
TRAINING_FILENAME = "training.json"
HISTORY_FILENAME = "history.csv"
SPLIT_FILENAME = "split.csv"
MODEL_FILENAME = "model.keras"
ENCODER_FILENAME = "metadata_encoder.json"
# The history columns the training-curve plot draws.
HISTORY_COLUMNS = (
    "epoch", "loss", "accuracy", "balanced_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy",
)


@dataclass(frozen=True)
class RunFiles:
    """The optional files of a run folder, empty or None where absent.

    Attributes:
        name: the folder's name, which labels the run in reports and comparisons.
        config: the resolved training configuration (`config.yaml`).
        training: the training summary (`training.json`): best epoch, wall time, parameters, ...
        history: one row per epoch (`history.csv`).
        split: `image_id, lesion_id, dx, subset` of every image (`split.csv`).
    """

    name: str
    config: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    history: pd.DataFrame | None = None
    split: pd.DataFrame | None = None


def read_run_files(run_dir):
    """Reads the optional files of a run folder.

    Raises:
        DataError: the folder does not exist, or one of its files is present but malformed.
    """
    run_dir = existing_run_dir(run_dir)
    history_path = run_dir / HISTORY_FILENAME
    split_path = run_dir / SPLIT_FILENAME
    return RunFiles(
        name=run_dir.name,
        config=_read_mapping(run_dir / CONFIG_FILENAME, yaml.safe_load, yaml.YAMLError),
        training=_read_mapping(run_dir / TRAINING_FILENAME, json.loads, json.JSONDecodeError),
        history=_read_history(history_path) if history_path.is_file() else None,
        split=load_split(split_path) if split_path.is_file() else None,
    )


def existing_run_dir(run_dir):
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run folder not found")
    return run_dir


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


def _read_history(path):
    history = read_csv(path, "history file not found", as_text=False)
    missing = [column for column in HISTORY_COLUMNS if column not in history.columns]
    if missing:
        raise DataError(
            f"{path}: missing column {', '.join(map(repr, missing))} (expected {', '.join(HISTORY_COLUMNS)}, ...)"
        )
    return history


def load_run_model(run_dir):
    """The run's kept model (`model.keras`), uncompiled: for prediction only."""
    model_path = Path(run_dir) / MODEL_FILENAME
    if not model_path.is_file():
        raise DataError(f"{model_path}: model file not found (is {Path(run_dir).name} a finished training run?)")
    return keras.saving.load_model(model_path, compile=False)
