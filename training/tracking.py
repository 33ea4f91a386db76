"""Logging runs to MLflow: settings, per-epoch metrics, test metrics, tags and the reports.

    model.fit(..., callbacks=[recorder, *tracking_callbacks(config, run_dir, recorder.history)])  # live curves
    log_finished_run(run_dir, config)                  # after the evaluation: everything else, from the folder
    track_finished_run(run_dir, output_dir)            # `python main.py track`: a folder trained earlier

The store is `$MLFLOW_TRACKING_URI`, else a sqlite database beside the runs
(`<output_dir>/mlflow.db`, its artifacts in `<output_dir>/mlartifacts/`); the experiment is
"ham10000". A run folder's MLflow run is the one tagged with the folder's path, so a resumed run
goes on logging into the same MLflow run.

Tracking never stops a run: the first MLflow call that fails (server unreachable, store locked or
unwritable) prints one warning line, and that store is not tried again in this process. MLflow
itself is an optional install (`pip install -e '.[track]'`); asking for tracking without it is a
UserError.
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
from common.files import check_writable
from common.run_folder import (
    CONFIG_FILENAME,
    ENVIRONMENT_FILENAME,
    HISTORY_FILENAME,
    LOCK_FILENAME,
    METRICS_FILENAME,
    MODEL_FILENAME,
    TRAINING_FILENAME,
)

EXPERIMENT = "ham10000"
DATABASE_FILENAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
# The run folder's files logged as artifacts: reports, plots, tables and settings. The checkpoint
# and TensorBoard's event files are not; the model only with `track_model`.
ARTIFACT_PATTERNS = ("*.md", "*.png", "*.json", "*.csv", "*.yaml", "gallery/*", "tta/*")
NOT_ARTIFACTS = (LOCK_FILENAME,)
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


def tracking_callbacks(config, run_dir, history):
    """The live-curves callback (`LiveCurves`) where `config.tracking` is "mlflow", else none."""
    return [LiveCurves(config, run_dir, history)] if config.tracking == "mlflow" else []


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


class LiveCurves(keras.callbacks.Callback):
    """Logs each epoch's row of the run's history (history.csv's columns, as `EpochRecorder`
    appends them: it must come after the recorder) to the run folder's MLflow run, at step = epoch.

    Before training it finds the folder's MLflow run (a resumed run's, by its `run_folder` tag) or
    starts one, and logs the rows that run lacks. It cannot stop the run: any MLflow failure is one
    warning line, and the store is not tried again in this process (`_softly`).
    """

    def __init__(self, config, run_dir, history):
        super().__init__()
        self.output_dir, self.run_dir, self.history = config.output_dir, Path(run_dir), history
        self.client = self.run_id = None

    def on_train_begin(self, logs=None):
        if self.run_id is not None:
            return  # the next stage of the same run

        def start():
            client = _client(self.output_dir)
            run_id = _find_run(client, self.run_dir) or _create_run(
                client, self.run_dir, _saved_config(self.run_dir), None
            )
            _log_missing_epochs(client, run_id, self.history)
            print(f"Tracking in MLflow: run {run_id} of experiment {EXPERIMENT!r} at {tracking_uri(self.output_dir)}")
            self.client, self.run_id = client, run_id

        _softly(self.output_dir, "starting", start)

    def on_epoch_end(self, epoch, logs=None):
        if self.run_id is not None:
            _softly(
                self.output_dir, "logging an epoch", lambda: _log_epochs(self.client, self.run_id, self.history[-1:])
            )


def log_finished_run(run_dir, config, study=None):
    """`track_finished_run` for a run this process trained with `tracking: mlflow`: an MLflow failure
    is one warning line (none if the store failed already), never an error."""
    if config.tracking == "mlflow":
        _softly(
            config.output_dir,
            "logging the results",
            lambda: track_finished_run(run_dir, config.output_dir, study, config.track_model),
        )


def track_finished_run(run_dir, output_dir, study=None, with_model=False):
    """Logs a finished run folder (config, history, test metrics, reports) to MLflow.

    The folder's MLflow run is the one tagged with its absolute path (`run_folder`): a run tracked
    live (`LiveCurves`) is completed, a folder not logged yet gets a new one, and a folder whose
    MLflow run is finished already is not logged twice. The folder itself is not written to: a
    reference run in git stays as it is.

    Returns:
        The MLflow run id, or None if the folder was logged already.
    """
    require_mlflow()
    run_dir = Path(run_dir).resolve()
    for name in (CONFIG_FILENAME, HISTORY_FILENAME):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir}: not a finished run folder (no {name})")
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    try:
        client = _client(output_dir)
        run_id = _find_run(client, run_dir)
        if run_id is not None and client.get_run(run_id).info.status == "FINISHED":
            return None
        run_id = run_id or _create_run(client, run_dir, _saved_config(run_dir), study)
        if study:
            client.set_tag(run_id, "study", str(study))
        _log_missing_epochs(client, run_id, pd.read_csv(run_dir / HISTORY_FILENAME).to_dict("records"))
        now = int(time.time() * 1000)
        client.log_batch(
            run_id, metrics=[Metric(key, float(value), now, 0) for key, value in _results(run_dir).items()]
        )
        for path in _artifacts(run_dir, with_model):
            folder = path.parent.relative_to(run_dir).as_posix()
            client.log_artifact(run_id, str(path), None if folder == "." else folder)
        client.set_terminated(run_id)
    except MlflowException as error:
        raise UserError(
            f"{run_dir}: could not be logged to MLflow at {tracking_uri(output_dir)} ({_reason(error)})"
        ) from None
    return run_id


# The stores that failed in this process: tracking of a run never waits for them, or warns, twice.
_FAILED_STORES = set()


def _softly(output_dir, doing, action):
    """Calls `action()`, any error of which is one warning line, and then the store is not tried again."""
    uri = tracking_uri(output_dir)
    if uri in _FAILED_STORES:
        return
    try:
        action()
    except Exception as error:
        _FAILED_STORES.add(uri)
        reason = error.args[0] if isinstance(error, UserError) else _reason(error)
        print(
            f"warning: MLflow tracking failed while {doing} ({reason}); the run goes on without tracking",
            file=sys.stderr,
        )


def _find_run(client, run_dir):
    """The id of the MLflow run tagged with the run folder, or None."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.run_folder = '{Path(run_dir).resolve()}'", max_results=1
    )
    return found[0].info.run_id if found else None


def _log_epochs(client, run_id, rows):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(name, float(value), now, int(row["epoch"]))
        for row in rows
        for name, value in row.items()
        if name != "epoch" and _is_number(value)
    ]
    client.log_batch(run_id, metrics=metrics)


def _log_missing_epochs(client, run_id, history):
    """Logs the rows of `history` that the MLflow run lacks: a run killed after an epoch's
    checkpoint but before MLflow heard of the epoch catches up when it resumes."""
    logged = {metric.step for metric in client.get_metric_history(run_id, "loss")}
    missing = [row for row in history if int(row["epoch"]) not in logged]
    if missing:
        _log_epochs(client, run_id, missing)


def _results(run_dir):
    """The training summary's headline numbers and the test metrics (`test_` + metrics.json's numbers)."""
    results = {}
    if (run_dir / TRAINING_FILENAME).is_file():
        summary = json.loads((run_dir / TRAINING_FILENAME).read_text(encoding="utf-8"))
        results.update(
            {key: summary[key] for key in ("best_epoch", "best_val_balanced_accuracy", "wall_time_s", "parameters")}
        )
    if (run_dir / METRICS_FILENAME).is_file():
        metrics = json.loads((run_dir / METRICS_FILENAME).read_text(encoding="utf-8"))
        results.update({f"{TEST_PREFIX}{key}": value for key, value in metrics.items()})
    return {key: value for key, value in results.items() if _is_number(value)}


def _saved_config(run_dir):
    return yaml.safe_load((Path(run_dir) / CONFIG_FILENAME).read_text(encoding="utf-8"))


def _client(output_dir):
    mlflow = require_mlflow()
    # MLflow announces creating and migrating its database, and logs a database error with its
    # traceback before raising it: the one warning line of `_softly` says what matters.
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
        location = (
            (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR).as_uri()
            if uri.startswith("sqlite:///")
            else None
        )
        experiment_id = client.create_experiment(EXPERIMENT, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(experiment_id, tags=_tags(run_dir, config, study), run_name=Path(run_dir).name)
    from mlflow.entities import Param

    params = [Param(key, str(value)[:6000]) for key, value in flatten(config).items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
        client.log_batch(run.info.run_id, params=params[start : start + 100])
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
    """ "gpu: NVIDIA H100", or for older run folders their list of devices."""
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
