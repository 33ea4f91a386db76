"""Training diagnostics: each check fires on a history made to trigger it, stays quiet on a healthy
one; a NaN loss stops a real run; a real run records its warnings."""

import json
import math
import time

import pandas as pd
import pytest
from conftest import TINY_CONFIG, run_main

from common.errors import TrainingError
from dataset import sequence
from evaluation.report import diagnostics_list
from training.diagnostics import (
    CHANCE_FROM_EPOCH,
    INPUT_BOUND_SHARE,
    LOSS_PATIENCE,
    OVERFIT_EPOCHS,
    at_chance,
    check_finite,
    first_warnings,
    input_bound,
    loss_stalled,
    overfitting,
)

CLASSES = 7


def history(epochs=8, **columns):
    """A healthy run: loss falling, train and validation balanced accuracy rising together, the
    input pipeline busy a fifth of the time. Keyword arguments replace a column by a list."""
    rows = [
        {
            "epoch": epoch,
            "stage": 1,
            "lr": 1e-3,
            "seconds": 10.0,
            "input_share": 0.2,
            "loss": 2.0 / epoch,
            "accuracy": 0.5 + 0.04 * epoch,
            "balanced_accuracy": 0.3 + 0.05 * epoch,
            "val_loss": 2.2 / epoch,
            "val_accuracy": 0.5 + 0.03 * epoch,
            "val_balanced_accuracy": 0.25 + 0.05 * epoch,
        }
        for epoch in range(1, epochs + 1)
    ]
    for name, values in columns.items():
        for row, value in zip(rows, values):
            row[name] = value
    return rows


def test_a_healthy_history_raises_no_warning():
    healthy = history()
    assert first_warnings(healthy, CLASSES) == []
    check_finite(healthy)


def test_stalled_loss_fires_after_the_patience_and_not_before():
    losses = [1.0, 0.8, 0.9, 0.85, 0.81, 0.9]
    rows = history(epochs=6, loss=losses)
    assert loss_stalled(rows[: 2 + LOSS_PATIENCE - 1]) is None
    assert "training loss has not decreased for 3 epochs" in loss_stalled(rows[: 2 + LOSS_PATIENCE])
    assert first_warnings(rows, CLASSES) == [
        {"epoch": 2 + LOSS_PATIENCE, "check": "loss_stalled", "message": loss_stalled(rows[: 2 + LOSS_PATIENCE])}
    ]


def test_overfitting_fires_when_the_gap_keeps_growing():
    train = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    val = [0.35, 0.4, 0.42, 0.43, 0.43, 0.43]  # gaps 0.05, 0.1, 0.18, 0.27, 0.37, 0.47
    rows = history(epochs=6, balanced_accuracy=train, val_balanced_accuracy=val)
    warnings = first_warnings(rows, CLASSES)
    assert [(w["epoch"], w["check"]) for w in warnings] == [(OVERFIT_EPOCHS + 1, "overfitting")]
    assert "gap grew for 3 epochs (0.050 -> 0.270)" in warnings[0]["message"]
    # A large gap that stays put is not a growing one.
    steady = history(epochs=6, balanced_accuracy=[0.9] * 6, val_balanced_accuracy=[0.5] * 6)
    assert overfitting(steady) is None


def test_chance_level_validation_fires_from_the_second_epoch():
    chance = 1 / CLASSES
    rows = history(epochs=3, val_balanced_accuracy=[chance, chance, 0.5])
    assert at_chance(rows[:1], CLASSES) is None  # a first epoch at chance is common
    assert "no better than always predicting one class (0.143)" in at_chance(rows[:CHANCE_FROM_EPOCH], CLASSES)
    assert at_chance(rows, CLASSES) is None
    # Chance is 1 / the classes validation holds: with 4 of them, 0.2 is below it.
    assert at_chance(history(epochs=2, val_balanced_accuracy=[0.2, 0.2]), 4) is not None
    assert first_warnings(rows, CLASSES)[0]["epoch"] == CHANCE_FROM_EPOCH


def test_waiting_for_data_fires_when_the_input_pipeline_dominates():
    rows = history(epochs=3, input_share=[0.2, 0.3, INPUT_BOUND_SHARE + 0.2])
    assert input_bound(rows[:2]) is None
    assert "the model waits for data: making batches took 70% of the training time" in input_bound(rows)
    # A run resumed from a history without the column has nothing to say about it.
    assert input_bound([{k: v for k, v in rows[-1].items() if k != "input_share"}]) is None


def test_a_warning_is_recorded_once_at_the_epoch_it_first_fires():
    chance = 1 / CLASSES
    rows = history(epochs=5, balanced_accuracy=[chance] * 5, val_balanced_accuracy=[chance] * 5)
    assert [(w["epoch"], w["check"]) for w in first_warnings(rows, CLASSES)] == [(2, "at_chance")]


@pytest.mark.parametrize("column, value", [("loss", math.nan), ("val_loss", math.inf)])
def test_a_non_finite_loss_raises_a_one_line_error_naming_the_epoch_and_the_fixes(column, value):
    rows = history(epochs=4)
    rows[-1][column] = value
    with pytest.raises(TrainingError) as error:
        check_finite(rows)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"epoch 4: {column} is")
    assert "--set lr=" in message and "mixed_precision" in message


@pytest.mark.backend
def test_nan_loss_stops_a_real_run_with_the_one_line_error(toy_dir, tmp_path, capsys):
    arguments = [
        "--model",
        "cnn",
        "--config",
        TINY_CONFIG,
        "--set",
        "lr=1e12",
        "--data-dir",
        toy_dir,
        "--output-dir",
        tmp_path,
    ]
    assert run_main(*arguments) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: epoch 1: loss is nan; training diverged") and "--set lr=" in line
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not (run_dir / "training.json").exists() and not (run_dir / "history.csv").exists()


@pytest.mark.backend
def test_a_real_run_with_slow_batches_warns_that_the_model_waits_for_data(toy_dir, tmp_path, monkeypatch, capsys):
    flip = sequence.random_dihedral

    def slow_flip(images, rng):  # the training batch's augmentation, as a slow disk or decoder would make it
        time.sleep(3.0)
        return flip(images, rng)

    monkeypatch.setattr(sequence, "random_dihedral", slow_flip)
    # One step per epoch, so that the sleep outweighs the step however busy the machine is, and
    # one worker: the input share divides the sequence's time by the workers, as if they all
    # fetched at once, which one batch per epoch does not give them.
    arguments = [
        "--model",
        "cnn",
        "--config",
        TINY_CONFIG,
        "--epochs",
        2,
        "--set",
        "batch_size=128",
        "--data-dir",
        toy_dir,
        "--output-dir",
        tmp_path,
        "--set",
        "workers=1",
    ]
    assert run_main(*arguments) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert pd.read_csv(run_dir / "history.csv")["input_share"].iloc[-1] >= INPUT_BOUND_SHARE
    diagnostics = json.loads((run_dir / "training.json").read_text())["diagnostics"]
    assert "input_bound" in [warning["check"] for warning in diagnostics]
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Warning, epoch")]
    assert printed == [f"Warning, epoch {w['epoch']}: {w['message']}" for w in diagnostics]
    report = (run_dir / "report.md").read_text()
    assert "## Training diagnostics" in report
    assert all(w["message"] in report for w in diagnostics)


def test_the_report_says_when_no_check_fired():
    assert diagnostics_list([]).startswith("None of the checks fired")
    warning = {"epoch": 2, "check": "at_chance", "message": "validation balanced accuracy 0.143 is ..."}
    assert diagnostics_list([warning]) == "- Epoch 2: validation balanced accuracy 0.143 is ..."
