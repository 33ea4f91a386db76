"""Logging runs to MLflow: settings, per-epoch metrics, test metrics, tags and the reports.

    tracker = Tracker.start(config, run_dir, study="20261125-101500")   # does nothing if tracking is off
    model.fit(..., callbacks=[recorder, tracker.callback(recorder.history)])
    tracker.finish(run_dir)                                               # after the evaluation

The store is `$MLFLOW_TRACKING_URI`, else a sqlite database beside the runs
(`<output_dir>/mlflow.db`, its artifacts in `<output_dir>/mlartifacts/`); the experiment is
"ham10000". A run folder remembers its MLflow run (`mlflow_run.json`), so a resumed run goes on
logging into the same MLflow run.

Tracking never stops a run: the first MLflow call that fails (server unreachable, store locked or
unwritable) prints one warning line, and the tracker does nothing from then on. MLflow itself is
an optional install (`pip install -e '.[track]'`); asking for tracking without it is a UserError.
"""

import json
import logging
import math
import numbers
import os
import sys
import time
from pathlib import Path

import keras
import pandas as pd
import yaml

from common.errors import UserError
from common.files import check_writable, write_json
from common.run_folder import (
    CONFIG_FILENAME, ENVIRONMENT_FILENAME, HISTORY_FILENAME, METRICS_FILENAME, MODEL_FILENAME, TRACKING_FILENAME,
    TRAINING_FILENAME,
)

EXPERIMENT = "ham10000"
DATABASE_FILENAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
# The run folder's files logged as artifacts: reports, plots, tables and settings. The checkpoint
# and TensorBoard's event files are not; the model only with `track_model`.
ARTIFACT_PATTERNS = ("*.md", "*.png", "*.json", "*.csv", "*.yaml", "gallery/*", "tta/*")
NOT_ARTIFACTS = (TRACKING_FILENAME, "run.lock")
# Test metrics logged after the evaluation: metrics.json's single numbers.
TEST_PREFIX = "test_"
# An unreachable server fails after this many retries, seconds each, not after MLflow's default
# of minutes of back-off (set the variables to change them).
HTTP_RETRIES = "1"
HTTP_TIMEOUT = "10"


def require_mlflow():
    """The `mlflow` module; UserError saying how to install it if it is not installed."""
    try:
        import mlflow
    except ImportError:
        raise UserError("tracking needs MLflow, which is not installed: pip install -e '.[track]'") from None
    return mlflow


def tracking_uri(output_dir):
    """`$MLFLOW_TRACKING_URI`, else the sqlite database in `output_dir`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(output_dir) / DATABASE_FILENAME).resolve()}"


def flatten(values, prefix=""):
    """A nested mapping as {"a.b": value}: MLflow's parameters are flat. Tuples become lists, as
    in config.yaml, so that a run logs the same parameters live as from its folder."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


class Tracker:
    """One run's MLflow run. Every method is safe to call after a failure: it then does nothing.

    Use `Tracker.start` (a live run) or `Tracker.for_folder` (a finished run folder).
    """

    def __init__(self, client, run_id):
        self.client = client
        self.run_id = run_id

    @property
    def active(self):
        return self.run_id is not None

    @classmethod
    def start(cls, config, run_dir, study=None):
        """Starts, or for a resumed run continues, the MLflow run of `run_dir`.

        Returns a tracker that does nothing if `config.tracking` is off or MLflow fails.
        Raises UserError if tracking is asked for and MLflow is not installed.
        """
        if config.tracking != "mlflow":
            return cls(None, None)
        require_mlflow()
        run_dir = Path(run_dir)
        tracker = cls(None, None)
        with tracker._failing_soft("starting"):
            client = _client(config.output_dir)
            saved = run_dir / TRACKING_FILENAME
            if saved.is_file():
                run_id = json.loads(saved.read_text(encoding="utf-8"))["run_id"]
                client.update_run(run_id, status="RUNNING")
            else:
                run_id = _create_run(client, run_dir, config.to_dict(), study)
                write_json(saved, {"run_id": run_id, "tracking_uri": tracking_uri(config.output_dir)})
            tracker.client, tracker.run_id = client, run_id
            print(f"Tracking in MLflow: run {run_id} of experiment {EXPERIMENT!r} at {tracking_uri(config.output_dir)}")
        return tracker

    def callback(self, history):
        """A Keras callback that logs each epoch's row of `history` (history.csv's rows, as
        `EpochRecorder` appends them; it must come after the recorder) at step = epoch."""
        return EpochLogger(self, history)

    def log_epoch(self, epoch, logs):
        if not self.active:
            return
        with self._failing_soft("logging an epoch"):
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric(name, float(value), now, epoch) for name, value in logs.items() if _is_number(value)]
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_missing_epochs(self, history):
        """Logs the rows of `history` that the MLflow run lacks: a run killed after an epoch's
        checkpoint but before MLflow heard of the epoch catches up when it resumes."""
        if not self.active or not history:
            return
        with self._failing_soft("catching up on the history"):
            logged = {metric.step for metric in self.client.get_metric_history(self.run_id, "loss")}
        for row in history:
            if int(row["epoch"]) not in logged:
                self.log_epoch(int(row["epoch"]), {key: value for key, value in row.items() if key != "epoch"})

    def finish(self, run_dir, with_model=False):
        """Logs the test metrics (if evaluated), the training summary and the folder's reports and
        plots (and the model, `with_model`), then marks the MLflow run finished."""
        if not self.active:
            return
        run_dir = Path(run_dir)
        with self._failing_soft("logging the results"):
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            results = {}
            if (run_dir / TRAINING_FILENAME).is_file():
                summary = json.loads((run_dir / TRAINING_FILENAME).read_text(encoding="utf-8"))
                results.update({key: summary[key] for key in ("best_epoch", "best_val_balanced_accuracy", "wall_time_s", "parameters")})
            if (run_dir / METRICS_FILENAME).is_file():
                metrics = json.loads((run_dir / METRICS_FILENAME).read_text(encoding="utf-8"))
                results.update({f"{TEST_PREFIX}{key}": value for key, value in metrics.items() if _is_number(value)})
            self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now, 0) for key, value in results.items() if _is_number(value)])
            for path in _artifacts(run_dir, with_model):
                folder = path.parent.relative_to(run_dir).as_posix()
                self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)
            self.client.set_terminated(self.run_id)

    def _failing_soft(self, doing):
        return _FailSoft(self, doing)


class _FailSoft:
    """Turns any error of the block into one warning line and switches the tracker off."""

    def __init__(self, tracker, doing):
        self.tracker, self.doing = tracker, doing

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or not isinstance(error, Exception):
            return False
        print(f"warning: MLflow tracking failed while {self.doing} ({_reason(error)}); the run goes on without tracking", file=sys.stderr)
        self.tracker.run_id = None
        return True


class EpochLogger(keras.callbacks.Callback):
    """Logs the last row of the run's history (history.csv's columns) after each epoch, and
    before training (a resumed run) the rows the MLflow run lacks."""

    def __init__(self, tracker, history):
        super().__init__()
        self.tracker = tracker
        self.history = history

    def on_train_begin(self, logs=None):
        self.tracker.log_missing_epochs(self.history)

    def on_epoch_end(self, epoch, logs=None):
        row = self.history[-1]
        self.tracker.log_epoch(int(row["epoch"]), {key: value for key, value in row.items() if key != "epoch"})


def track_finished_run(run_dir, output_dir, study=None):
    """Logs a finished run folder (config, history, metrics, reports) as a new MLflow run.

    A folder already in the experiment (tag `run_folder`, its absolute path) is not logged twice.
    The folder itself is not written to: a reference run in git stays as it is.

    Returns:
        The MLflow run id, or None if the folder was already logged.
    """
    require_mlflow()
    run_dir = Path(run_dir).resolve()
    for name in (CONFIG_FILENAME, HISTORY_FILENAME):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir}: not a finished run folder (no {name})")
    from mlflow.exceptions import MlflowException

    config = yaml.safe_load((run_dir / CONFIG_FILENAME).read_text(encoding="utf-8"))
    try:
        client = _client(output_dir)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            found = client.search_runs([experiment.experiment_id], filter_string=f"tags.run_folder = '{run_dir}'", max_results=1)
            if found:
                return None
        run_id = _create_run(client, run_dir, config, study)
    except MlflowException as error:
        raise UserError(f"{run_dir}: could not be logged to MLflow at {tracking_uri(output_dir)} ({_reason(error)})") from None
    tracker = Tracker(client, run_id)
    tracker.log_missing_epochs(pd.read_csv(run_dir / HISTORY_FILENAME).to_dict("records"))
    tracker.finish(run_dir)
    if not tracker.active:
        raise UserError(f"{run_dir}: could not be logged to MLflow at {tracking_uri(output_dir)} (see the warning above)")
    return run_id


def _client(output_dir):
    mlflow = require_mlflow()
    # MLflow announces creating and migrating its database, and logs a database error with its
    # traceback before raising it: the one warning line of `_FailSoft` says what matters.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    uri = tracking_uri(output_dir)
    if uri.startswith("http"):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_RETRIES)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT)
    if uri.startswith("sqlite:///"):
        _check_database(uri)
    return mlflow.tracking.MlflowClient(tracking_uri=uri)


def _check_database(uri):
    """Raises UserError at once where MLflow would retry opening the database for two minutes:
    the path is a folder, or its folder (or the file) cannot be written."""
    path = Path(uri.removeprefix("sqlite:///"))
    if path.is_dir():
        raise UserError(f"{uri}: the database is a folder; point the URI at a file (sqlite:///PATH/mlflow.db)")
    check_writable(path.parent)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{uri}: the database is read-only")


def _create_run(client, run_dir, config, study):
    """A new MLflow run for `run_dir`, with the config as parameters and the run's tags."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        uri = tracking_uri(config["output_dir"])
        # Beside a local database, the artifacts go beside it too, not into the current directory.
        location = (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR).as_uri() if uri.startswith("sqlite:///") else None
        experiment_id = client.create_experiment(EXPERIMENT, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(experiment_id, tags=_tags(run_dir, config, study), run_name=Path(run_dir).name)
    from mlflow.entities import Param

    params = [Param(key, str(value)[:6000]) for key, value in flatten(config).items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
        client.log_batch(run.info.run_id, params=params[start:start + 100])
    return run.info.run_id


def _tags(run_dir, config, study):
    environment_file = Path(run_dir) / ENVIRONMENT_FILENAME
    environment = json.loads(environment_file.read_text(encoding="utf-8")) if environment_file.is_file() else {}
    tags = {
        "model": config["model"],
        "metadata": str(bool(config["metadata"])).lower(),
        "backend": environment.get("backend") or keras.backend.backend(),
        "device": _device(environment),
        "git_commit": (environment.get("git") or {}).get("commit") or "",
        "run_folder": str(Path(run_dir).resolve()),
    }
    if study:
        tags["study"] = str(study)
    return tags


def _device(environment):
    """"gpu: NVIDIA H100", or for older run folders their list of devices."""
    device = environment.get("device")
    if isinstance(device, dict):
        return f"{device.get('kind')}: {device.get('name')}"
    return ", ".join(environment.get("devices") or [])


def _artifacts(run_dir, with_model):
    paths = {path for pattern in ARTIFACT_PATTERNS for path in run_dir.glob(pattern) if path.is_file()}
    if with_model and (run_dir / MODEL_FILENAME).is_file():
        paths.add(run_dir / MODEL_FILENAME)
    return sorted(path for path in paths if path.name not in NOT_ARTIFACTS)


def _reason(error):
    """An MLflow error in one line: its first, at most 200 characters (a server may answer with a page of HTML)."""
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


def _is_number(value):
    """A finite number (numpy's too): what MLflow takes as a metric."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
