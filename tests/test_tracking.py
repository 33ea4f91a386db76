"""MLflow tracking (training.tracking) and TensorBoard logs: what a tracked run logs, that a
resumed run continues its MLflow run, that finished run folders are logged once, and that
tracking never stops a run."""

import json
import sqlite3
import sys
import time

import pandas as pd
import pytest
import yaml

from common.run_folder import HISTORY_FILENAME, METRICS_FILENAME, TENSORBOARD_DIR
from tests.conftest import REPO_ROOT, TINY_CONFIG, run_main
from training import load_config, tracking, trainer
from training.tracking import EXPERIMENT, LiveCurves, flatten, log_finished_run, track_finished_run
from training.trainer import tensorboard_callbacks

mlflow = pytest.importorskip("mlflow", reason="tracking needs the .[track] extra")

TRACK_WARNING = "warning: MLflow tracking failed"


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """No store has failed yet, as in a new process (a failed store is not tried again in one)."""
    monkeypatch.setattr(tracking, "_FAILED_STORES", set())


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An output folder whose default sqlite store the test reads back."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "results"


def client(output_dir):
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{output_dir.resolve() / 'mlflow.db'}")


def search(output_dir):
    """The MLflow runs of the experiment in `output_dir`'s default store."""
    return client(output_dir).search_runs([client(output_dir).get_experiment_by_name(EXPERIMENT).experiment_id])


def train_toy(toy_dir, output_dir, *flags):
    return run_main(
        "--model",
        "cnn",
        "--config",
        TINY_CONFIG,
        "--data-dir",
        toy_dir,
        "--output-dir",
        output_dir,
        "--epochs",
        "2",
        *flags,
    )


@pytest.mark.backend  # TensorBoard's logs under JAX too
def test_a_tracked_run_logs_settings_epochs_test_metrics_tags_and_reports(toy_dir, store):
    assert train_toy(toy_dir, store, "--track") == 0
    (run_dir,) = (store / "runs").iterdir()
    (run,) = search(store)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert run.data.params == {key: str(value) for key, value in flatten(config).items()}
    assert run.data.tags["model"] == "cnn" and run.data.tags["metadata"] == "false"
    assert run.data.tags["backend"] and run.data.tags["device"] and "git_commit" in run.data.tags
    # Every epoch, every column of history.csv, at step = epoch.
    history = pd.read_csv(run_dir / HISTORY_FILENAME)
    for column in ("val_balanced_accuracy", "loss", "lr", "seconds"):
        logged = client(store).get_metric_history(run.info.run_id, column)
        assert [m.step for m in logged] == list(history["epoch"])
        assert [m.value for m in logged] == pytest.approx(list(history[column]))
    metrics = json.loads((run_dir / METRICS_FILENAME).read_text())
    assert run.data.metrics["test_balanced_accuracy"] == pytest.approx(metrics["balanced_accuracy"])
    artifacts = {item.path for item in client(store).list_artifacts(run.info.run_id)}
    assert {"report.md", "confusion_matrix.png", "metrics.json", "config.yaml", "history.csv"} <= artifacts
    assert "model.keras" not in artifacts
    assert run.info.status == "FINISHED"
    # TensorBoard's event files, on by default, in the run folder.
    assert list((run_dir / TENSORBOARD_DIR / "train").glob("events.out.tfevents.*"))
    assert list((run_dir / TENSORBOARD_DIR / "validation").glob("events.out.tfevents.*"))


def test_an_interrupted_run_resumes_into_the_same_mlflow_run(toy_dir, store, monkeypatch):
    record_epoch = trainer.EpochRecorder.on_epoch_end

    def record_then_interrupt(self, epoch, logs=None):
        record_epoch(self, epoch, logs)
        raise KeyboardInterrupt  # killed after the checkpoint, before MLflow heard of the epoch

    monkeypatch.setattr(trainer.EpochRecorder, "on_epoch_end", record_then_interrupt)
    assert train_toy(toy_dir, store, "--track") == 130
    monkeypatch.setattr(trainer.EpochRecorder, "on_epoch_end", record_epoch)
    (run_dir,) = (store / "runs").iterdir()
    assert run_main("--resume", run_dir) == 0
    (run,) = search(store)
    assert run.data.tags["run_folder"] == str(run_dir.resolve())
    assert [m.step for m in client(store).get_metric_history(run.info.run_id, "val_loss")] == [1, 2]
    assert run.info.status == "FINISHED" and "test_balanced_accuracy" in run.data.metrics


def tracked_folder(store, tmp_path):
    """A config and a run folder holding its config.yaml, as `train_run` makes them before training."""
    config = load_config("cnn", TINY_CONFIG, {"tracking": "mlflow", "output_dir": str(store)})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config.save(run_dir / "config.yaml")
    return config, run_dir


def test_a_resumed_run_continues_its_mlflow_run_and_the_folder_completes_it_once(store, tmp_path):
    config, run_dir = tracked_folder(store, tmp_path)
    history = []
    first = LiveCurves(config, run_dir, history)
    first.on_train_begin()
    history.append({"epoch": 1, "loss": 2.0})
    first.on_epoch_end(0)
    # The process dies after epoch 2's checkpoint, before MLflow heard of it: the resumed run finds
    # the MLflow run by the folder's tag and catches up.
    history.append({"epoch": 2, "loss": 1.0})
    again = LiveCurves(config, run_dir, history)
    again.on_train_begin()
    assert again.run_id == first.run_id
    pd.DataFrame(history).to_csv(run_dir / HISTORY_FILENAME, index=False)
    assert track_finished_run(run_dir, store, study="a-study") == first.run_id
    (run,) = search(store)
    assert [m.step for m in client(store).get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert run.info.status == "FINISHED" and run.data.tags["study"] == "a-study"
    assert track_finished_run(run_dir, store) is None  # logged once


def test_track_model_logs_the_weights_too(toy_dir, store):
    assert train_toy(toy_dir, store, "--track", "--set", "track_model=true") == 0
    (run,) = search(store)
    assert "model.keras" in {item.path for item in client(store).list_artifacts(run.info.run_id)}


def test_unreachable_tracking_server_warns_once_and_the_run_goes_on(toy_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert train_toy(toy_dir, tmp_path, "--track", "--epochs", "1") == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / METRICS_FILENAME).is_file()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(TRACK_WARNING) and "127.0.0.1:9" in warnings[0]


def test_unwritable_or_locked_store_warns_once_and_tracking_stops(store, tmp_path, monkeypatch, capsys):
    config, run_dir = tracked_folder(store, tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker / 'mlflow.db'}")
    curves = LiveCurves(config, run_dir, [])
    curves.on_train_begin()
    assert curves.run_id is None
    assert capsys.readouterr().err.count(TRACK_WARNING) == 1

    # A store that another process holds locked while the run is under way.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    history = []
    curves = LiveCurves(config, run_dir, history)
    curves.on_train_begin()
    assert curves.run_id is not None
    lock = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        for epoch in (1, 2):  # switched off after the first: no second wait, no second warning
            history.append({"epoch": epoch, "loss": 1.0 / epoch})
            curves.on_epoch_end(epoch - 1)
        log_finished_run(run_dir, config)
    finally:
        lock.close()
    error = capsys.readouterr().err
    assert error.count(TRACK_WARNING) == 1 and "locked" in error and "Traceback" not in error


def test_a_sqlite_store_that_is_a_folder_fails_at_once(store, tmp_path, monkeypatch, capsys):
    config, run_dir = tracked_folder(store, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}")  # MLflow would retry it for two minutes
    started = time.monotonic()
    curves = LiveCurves(config, run_dir, [])
    curves.on_train_begin()
    assert curves.run_id is None
    assert time.monotonic() - started < 30
    assert f"{TRACK_WARNING} while starting (sqlite:///{tmp_path}: the database is a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "uri, message",
    [
        ("http://127.0.0.1:9", "could not be logged to MLflow at http://127.0.0.1:9 (API request to"),
        ("sqlite:///FOLDER", "sqlite:///FOLDER: the database is a folder"),
        (
            "file:///FOLDER/mlruns",
            "could not be logged to MLflow at file:///FOLDER/mlruns (The filesystem tracking backend",
        ),
    ],
    ids=["unreachable server", "sqlite folder", "file store"],
)
def test_track_command_that_cannot_log_is_one_line_naming_the_store(uri, message, tmp_path, monkeypatch, capsys):
    if uri.startswith("file") and int(mlflow.__version__.split(".")[0]) < 3:
        pytest.skip("MLflow 2 still writes file stores")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.replace("FOLDER", str(tmp_path)))
    assert run_main("track", REPO_ROOT / "results" / "reference" / "runs" / "cnn-fold0") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ") and message.replace("FOLDER", str(tmp_path)) in error


def test_track_without_mlflow_says_how_to_install(toy_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    assert train_toy(toy_dir, tmp_path, "--track") == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: tracking needs MLflow, which is not installed: pip install -e '.[track]'"
    )
    assert not (tmp_path / "runs").exists()


def test_track_command_logs_the_reference_runs_once(store, capsys):
    reference = REPO_ROOT / "results" / "reference" / "runs"
    assert run_main("track", reference, "--output-dir", store) == 0
    # The query of docs/tracking-and-tuning.md.
    mlflow.set_tracking_uri(f"sqlite:///{store.resolve() / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], order_by=["metrics.test_balanced_accuracy DESC"])
    expected = {
        run_dir.name: json.loads((run_dir / METRICS_FILENAME).read_text())["balanced_accuracy"]
        for run_dir in reference.iterdir()
    }
    assert dict(zip(runs["tags.mlflow.runName"], runs["metrics.test_balanced_accuracy"])) == pytest.approx(expected)
    assert list(runs["metrics.test_balanced_accuracy"]) == sorted(expected.values(), reverse=True)
    # Logged once: a second `track` skips them.
    capsys.readouterr()
    assert run_main("track", reference, "--output-dir", store) == 0
    assert capsys.readouterr().out.count("already in MLflow, skipped") == len(expected)
    assert len(search(store)) == len(expected)


def test_tracking_setting_in_a_config_file(tmp_path):
    path = tmp_path / "tracked.yaml"
    path.write_text("tracking: mlflow\ntensorboard: false\n")
    config = load_config("cnn", path)
    assert config.tracking == "mlflow" and config.tensorboard is False
    path.write_text("tracking: wandb\n")
    with pytest.raises(Exception, match="unknown tracking 'wandb'"):
        load_config("cnn", path)


def test_tensorboard_is_skipped_with_a_note_without_tensorflow(tmp_path, monkeypatch, capsys):
    config = load_config("cnn", TINY_CONFIG)
    assert len(tensorboard_callbacks(config, tmp_path)) == 1
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *rest: None if name == "tensorflow" else find_spec(name, *rest)
    )
    assert tensorboard_callbacks(config, tmp_path) == []
    assert "no TensorBoard logs" in capsys.readouterr().out
    config.tensorboard = False
    assert tensorboard_callbacks(config, tmp_path) == []
