"""The command line end to end at toy size: train, --model all, resume, and bad input."""

import json

import pandas as pd
import pytest
from conftest import REPO_ROOT, TINY_CONFIG, copy_toy_dir, run_main

import main
import pipeline.experiment
import training.config
from common.errors import DataError
from pipeline import commands
from training import ConfigError, TrainConfig, load_config, trainer
from training.config import parse_settings

RUN_FILES = (
    "config.yaml",
    "split.csv",
    "environment.json",
    "history.csv",
    "training.json",
    "model.keras",
    "predictions.csv",
    "metrics.json",
    "report.md",
    "confusion_matrix.png",
    "training_curves.png",
    "per_class.png",
    "roc_curves.png",
)


# The settings a user types every day have flags; `--set` gives every setting.
SETTING_FLAGS = {
    "--metadata",
    "--weights",
    "--epochs",
    "--seed",
    "--limit",
    "--split",
    "--data-dir",
    "--output-dir",
    "--track",
}


def command_parser(name):
    commands = next(action for action in main.build_parser()._actions if action.dest == "command")
    return commands.choices[name]


@pytest.mark.parametrize("command", ["train", "tune"])
def test_train_and_tune_share_the_setting_flags_and_every_one_names_a_setting(command):
    flags = {
        action.option_strings[0]: action
        for action in command_parser(command)._actions
        if isinstance(action, commands.Setting)
    }
    assert set(flags) - {"--set"} == SETTING_FLAGS
    assert {action.setting for flag, action in flags.items() if flag != "--set"} <= set(TrainConfig.defaults())


def test_flags_and_set_become_one_set_of_overrides_and_help_shows_the_real_defaults():
    arguments = command_parser("train").parse_args(
        [
            "--model",
            "cnn",
            "--set",
            "lr=0.01",
            "--set",
            "class_weights=false",
            "--data-dir",
            "x",
            "--metadata",
            "--track",
        ]
    )
    assert commands.overrides(arguments) == {
        "lr": 0.01,
        "class_weights": False,
        "data_dir": "x",
        "metadata": True,
        "tracking": "mlflow",
    }
    text = " ".join(command_parser("train").format_help().split())
    assert f"(default: {TrainConfig.epochs})" in text and "(default: None)" not in text
    assert "focal_gamma" in text  # the settings without a flag are listed for --set


def test_a_setting_given_by_a_flag_and_by_set_is_refused_and_a_repeated_option_keeps_its_last_value():
    arguments = command_parser("train").parse_args(["--epochs", "3", "--set", "epochs=4"])
    with pytest.raises(ConfigError, match="--epochs and --set both set epochs: give it once"):
        commands.overrides(arguments)
    arguments = command_parser("train").parse_args(
        ["--epochs", "3", "--epochs", "4", "--set", "ema=0.9", "--set", "ema=0.99"]
    )
    assert commands.overrides(arguments) == {"epochs": 4, "ema": 0.99}


def test_set_assigns_any_setting_in_yaml():
    assert parse_settings(["ema=0.99", "augmentation={rotation: 0.5, zoom: 0.2}", "lr=1"]) == {
        "ema": 0.99,
        "augmentation": {"rotation": 0.5, "zoom": 0.2},
        "lr": 1,
    }
    config = load_config("densenet", TINY_CONFIG, parse_settings(["ema=0.99", "weights=none"]))
    assert config.ema == 0.99 and config.weights is None and config.image_size == 32  # the rest from the file


@pytest.mark.backend
def test_model_all_writes_four_complete_runs_on_one_split(study):
    runs = sorted((study / "runs").iterdir())
    assert sorted(run.name.split("-", 2)[2] for run in runs) == ["cnn", "densenet", "vgg16", "vgg16-meta"]
    for run in runs:
        missing = [name for name in RUN_FILES if not (run / name).is_file()]
        assert missing == [], run.name
        assert not (run / "checkpoint").exists()
    assert (
        study / "runs" / next(r.name for r in runs if r.name.endswith("vgg16-meta")) / "metadata_encoder.json"
    ).is_file()
    splits = [pd.read_csv(run / "split.csv") for run in runs]
    assert all(split.equals(splits[0]) for split in splits)


@pytest.mark.backend
def test_predictions_hold_each_test_image_exactly_once(study):
    for run in (study / "runs").iterdir():
        predictions = pd.read_csv(run / "predictions.csv")
        split = pd.read_csv(run / "split.csv")
        test_ids = split.loc[split["subset"] == "test", "image_id"]
        assert sorted(predictions["image_id"]) == sorted(test_ids)
        assert predictions["image_id"].is_unique
        probabilities = predictions.filter(like="prob_")
        assert probabilities.shape[1] == 7 and ((probabilities.sum(axis=1) - 1).abs() < 1e-4).all()


@pytest.mark.backend
def test_model_all_writes_the_study_and_its_comparison(study):
    (study_dir,) = (study / "studies").iterdir()
    assert study_dir.name.endswith("-all")
    runs = json.loads((study_dir / "study.json").read_text())["runs"]
    assert sorted(run["run_dir"] for run in runs) == sorted(str(run) for run in (study / "runs").iterdir())
    assert all(run["finished"] for run in runs)
    for name in ("summary.md", "summary.json", "spread.png", "comparison/comparison.md", "comparison/comparison.png"):
        assert (study_dir / "summary" / name).stat().st_size > 0


@pytest.mark.backend
def test_interrupted_run_resumes_without_losing_or_repeating_an_epoch(toy_dir, tmp_path, monkeypatch, capsys):
    record_epoch = trainer.EpochRecorder.on_epoch_end

    def interrupt_after_first_epoch(self, epoch, logs=None):
        record_epoch(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt  # as if killed after epoch 1 was checkpointed

    monkeypatch.setattr(trainer.EpochRecorder, "on_epoch_end", interrupt_after_first_epoch)
    arguments = [
        "--model",
        "cnn",
        "--config",
        TINY_CONFIG,
        "--epochs",
        3,
        "--data-dir",
        toy_dir,
        "--output-dir",
        tmp_path,
    ]
    assert run_main(*arguments) == 130
    progress = capsys.readouterr().out
    assert "steps per epoch, up to 3 epochs" in progress
    assert "Epoch 1 took" in progress and "this stage has at most 2 more (about" in progress
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert len(pd.read_csv(run_dir / "history.csv")) == 1
    assert (run_dir / "checkpoint" / "state.json").is_file() and not (run_dir / "metrics.json").exists()

    monkeypatch.setattr(trainer.EpochRecorder, "on_epoch_end", record_epoch)
    assert run_main("--resume", run_dir) == 0
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert json.loads((run_dir / "training.json").read_text())["epochs_completed"] == 3
    assert (run_dir / "metrics.json").is_file() and len(list((tmp_path / "runs").iterdir())) == 1


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["--model", "resnet"],
            "error: unknown model 'resnet' (available: cnn, convnext_tiny, densenet, densenet121, ",
        ),
        (["--model", "cnn", "--epochs", "-2"], "error: epochs must be a positive integer; got -2"),
        (["--model", "vgg16", "--set", "image_size=16"], "error: image_size 16 is too small for model 'vgg16'"),
        (["--model", "cnn", "--config", "nowhere.yaml"], "error: nowhere.yaml: config file not found"),
        (["--model", "cnn", "--data-dir", "nowhere"], "error: nowhere: data folder not found"),
        (["--resume", "nowhere"], "error: nowhere: not a run folder"),
        (["--model", "cnn", "--set", "ema"], "error: --set 'ema': expected KEY=VALUE, e.g. --set ema=0.99"),
        (["--model", "cnn", "--set", "emma=0.9"], "error: command line: unknown setting 'emma'"),
        (["--model", "cnn", "--set", "ema=2"], "error: ema is the moving average's momentum, in [0, 1)"),
        (["compare", "nowhere", "nowhere-else"], "error: nowhere: run folder not found"),
    ],
)
def test_bad_input_fails_with_one_line_before_any_work(arguments, message, tmp_path, capsys):
    assert run_main(*arguments, *([] if arguments[0] == "compare" else ["--output-dir", tmp_path])) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--model", "cnn", "--set", "lr=.inf"], "error: setting 'lr' must be a finite number; got inf"),
        (["--model", ""], "error: unknown model '' (available: cnn, convnext_tiny, densenet, densenet121, "),
        (["--model", "cnn", "--seed", "-1"], "error: seed must be in [0, 4294967295]; got -1"),
        (["--model", "cnn", "--seed", "4294967296"], "error: seed must be in [0, 4294967295]; got 4294967296"),
        (
            ["--model", "cnn", "--epochs", "1" + "0" * 30],
            "error: setting 'epochs' is too large: at most 9223372036854775807",
        ),
        (
            ["--model", "cnn", "--set", "model_options={filters: [8, -16, 16, 32, 32]}"],
            "error: CNN filters must be whole numbers of at least 1; got [8, -16, 16, 32, 32]",
        ),
        (
            ["--model", "cnn", "--set", "head={dense_units: [0]}"],
            "error: head dense_units must be whole numbers of at least 1; got [0]",
        ),
        (
            ["--model", "cnn", "--set", "augmentation={rotation: lots}"],
            "error: augmentation rotation must be a number; got 'lots'",
        ),
        (
            ["--model", "densenet", "--set", "model_options={growth_rate: 1.5}"],
            "error: DenseNet growth_rate must be a whole number; got 1.5",
        ),
    ],
    ids=[
        "lr inf",
        "empty model",
        "seed -1",
        "seed 2**32",
        "epochs 10**30",
        "negative filters",
        "no dense units",
        "rotation lots",
        "fractional growth",
    ],
)
def test_values_that_would_fail_inside_training_are_refused_in_one_line(arguments, message, toy_dir, tmp_path, capsys):
    # Toy settings: before these checks, most of these trained (or tried to) before failing.
    assert run_main(*arguments, "--config", TINY_CONFIG, "--data-dir", toy_dir, "--output-dir", tmp_path) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_data_folder_that_is_not_ham10000(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert run_main("--model", "cnn", "--data-dir", tmp_path / "data", "--output-dir", tmp_path) == 2
    assert "is not a HAM10000 folder" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_missing_image_fails_before_a_run_folder_is_made(toy_dir, tmp_path, capsys):
    data = copy_toy_dir(toy_dir, tmp_path / "data")
    next((data / "images").glob("*.jpg")).unlink()
    assert run_main("--model", "cnn", "--config", TINY_CONFIG, "--data-dir", data, "--output-dir", tmp_path) == 2
    assert "1 of 80 images not found" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_help_lists_the_models(capsys):
    with pytest.raises(SystemExit):
        main.main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("cnn", "densenet", "vgg16", "all"))


@pytest.mark.parametrize("kind, preset", [("cpu", "cpu.yaml"), ("gpu", "gpu.yaml")])
def test_without_config_the_preset_fits_the_hardware(kind, preset, monkeypatch, capsys):
    monkeypatch.setattr(training.config, "compute_device", lambda: {"kind": kind, "name": "a test device"})
    trained = []

    def record(config):
        trained.append(config)
        raise DataError("stopped before training")

    monkeypatch.setattr(pipeline.experiment, "train_and_evaluate", record)
    assert run_main("--model", "densenet", "--seed", 3) == 2
    assert trained == [load_config("densenet", REPO_ROOT / "configs" / preset, {"seed": 3})]
    assert f"so the preset configs/{preset}" in capsys.readouterr().out


def test_a_config_file_may_name_the_study_s_configurations(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(TINY_CONFIG.read_text() + "study: [cnn, vgg16_bn-meta]\n")
    assert training.config.study_configurations(config) == (("cnn", False), ("vgg16_bn", True))
    assert load_config("cnn", config).image_size == 32  # `study:` is not a run's setting
    assert training.config.study_configurations(TINY_CONFIG) == training.config.STUDY
    config.write_text("study: [cnn, resnet-meta]\n")
    with pytest.raises(ConfigError, match="unknown model resnet-meta under 'study'"):
        training.config.study_configurations(config)
