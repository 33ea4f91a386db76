"""The hyper-parameter search (training.tuning, `python main.py tune`) at toy size: best.yaml that
--config takes, trials that never predict the test subset, and a stopped search that resumes
without redoing its finished trials."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_reliability import interrupt_after

import evaluation
import inference
import training.run
from dataset import PreparedData
from tests.conftest import REPO_ROOT, TINY_CONFIG, run_main
from training import load_config

keras_tuner = pytest.importorskip("keras_tuner", reason="tuning needs the .[tune] extra")

from training import tuning  # noqa: E402  (imports keras_tuner)


def test_search_space_values_become_a_valid_config():
    config = load_config("densenet", TINY_CONFIG, {"augmentation": {"rotation": 0.5, "saturation": 0.3}})
    space = tuning.search_space(config)
    assert set(space.values) == {
        "lr",
        "weight_decay",
        "dropout",
        "width",
        "balance_target",
        "augmentation",
        "label_smoothing",
    }
    values = {
        "lr": 3e-3,
        "weight_decay": 1e-3,
        "dropout": 0.30000000000000004,
        "width": 1.5,
        "balance_target": 7,
        "augmentation": 2.0,
        "label_smoothing": 0.1,
        "tuner/trial_id": "0003",
    }
    tuned = tuning.apply_values(config, values)
    assert (tuned.lr, tuned.optimizer, tuned.weight_decay, tuned.balance_target) == (3e-3, "adamw", 1e-3, 7)
    assert tuned.head == {**config.head, "dropout": 0.3} and tuned.label_smoothing == 0.1
    assert tuned.model_options["growth_rate"] == 12  # tiny.yaml's 8, times 1.5
    # Augmentation strengths scaled, within their limits (saturation at most 0.5).
    assert tuned.augmentation == {"rotation": 1.0, "saturation": 0.5}
    # The width option of each model; a pretrained VGG16 has none, the cost loss no smoothing.
    assert tuning.apply_values(load_config("cnn", TINY_CONFIG), {"width": 0.5}).model_options["filters"] == [
        4,
        8,
        8,
        16,
        16,
    ]
    assert tuning.apply_values(load_config("vgg16_bn", TINY_CONFIG), {"width": 0.5}).model_options["width"] == 0.5
    vgg16 = load_config("vgg16", TINY_CONFIG, {"loss": "cost", "weights": "imagenet"})
    assert not {"width", "label_smoothing", "augmentation"} & set(tuning.search_space(vgg16).values)


def test_a_hyperband_budget_shorter_than_the_preset_s_warm_up_shortens_it():
    config = load_config("cnn", REPO_ROOT / "configs" / "cpu.yaml", {"epochs": 27})  # warmup_epochs: 2
    assert tuning.apply_values(config, {"tuner/epochs": 1}).warmup_epochs == 0  # Hyperband's first round
    assert tuning.apply_values(config, {"tuner/epochs": 9}).warmup_epochs == 2


def test_a_stopped_search_resumes_without_redoing_trials_and_never_predicts_the_test_subset(
    toy_dir, tmp_path, monkeypatch, capsys
):
    subsets, trained = [], []
    sequence = PreparedData.sequence
    monkeypatch.setattr(
        PreparedData,
        "sequence",
        lambda self, subset, **options: subsets.append(subset) or sequence(self, subset, **options),
    )
    for module, name in ((evaluation, "predict_subset"), (evaluation, "evaluate_run"), (inference, "write_gallery")):
        monkeypatch.setattr(module, name, lambda *args, **kwargs: pytest.fail("a trial read the test subset"))
    train_run = training.run.train_run

    def train_then_stop(config, **options):
        trained.append(config)
        if len(trained) == 2:
            raise KeyboardInterrupt  # the search is stopped during its second trial
        return train_run(config, **options)

    monkeypatch.setattr(tuning, "train_run", train_then_stop)
    search = ("--model", "cnn", "--config", TINY_CONFIG, "--data-dir", toy_dir, "--output-dir", tmp_path)
    assert run_main("tune", *search, "--trials", "3") == 130
    (search_dir,) = (tmp_path / "tuning").iterdir()
    assert list(json.loads((search_dir / "tuning.json").read_text())["results"]) == ["0"]

    # Closed at the one finished trial: best.yaml from it, and the interrupted trial is not re-run.
    assert run_main("tune", "--resume", search_dir, "--trials", "1") == 0
    assert len(trained) == 2 and (search_dir / "best.yaml").is_file()

    assert run_main("tune", "--resume", search_dir, "--trials", "3") == 0
    # Trial 0 was kept; the interrupted trial 1 ran again, with the values it had, then trial 2.
    assert len(trained) == 4 and trained[1] == trained[2]
    results = json.loads((search_dir / "tuning.json").read_text())["results"]
    assert sorted(results) == ["0", "1", "2"]
    assert set(subsets) == {"train", "val"}
    for result in results.values():
        assert Path(result["run_dir"]).joinpath("training.json").is_file()
        assert not Path(result["run_dir"]).joinpath("predictions.csv").exists()
    assert "Trial 2 (3 of 3)" in capsys.readouterr().out

    # best.yaml: the config file's settings with the best trial's values; --config takes it.
    # Toy trials often tie, so the best is whichever the search recorded among the top scores.
    best_trial = json.loads((search_dir / "tuning.json").read_text())["best"]["trial"]
    assert results[best_trial]["val_balanced_accuracy"] == max(
        result["val_balanced_accuracy"] for result in results.values()
    )
    best = load_config("cnn", search_dir / "best.yaml")
    assert best == tuning.apply_values(load_config("cnn", TINY_CONFIG), results[best_trial]["values"])
    # A finished search resumed again trains nothing.
    assert run_main("tune", "--resume", search_dir) == 0
    assert len(trained) == 4


def test_a_search_killed_in_its_first_trial_resumes_that_trial_with_its_values_in_its_folder(
    toy_dir, tmp_path, monkeypatch, capsys
):
    search = ("--model", "cnn", "--config", TINY_CONFIG, "--epochs", 2, "--data-dir", toy_dir, "--output-dir", tmp_path)

    def first_trial(output):
        return next(line for line in output.splitlines() if line.startswith("Trial 0 (1 of 1): "))

    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)  # killed after the first trial's first epoch, before KerasTuner saved its tuner
        assert run_main("tune", *search, "--trials", 1) == 130
    proposed = first_trial(capsys.readouterr().out)
    (search_dir,) = (tmp_path / "tuning").iterdir()
    assert run_main("tune", "--resume", search_dir) == 0
    output = capsys.readouterr().out
    assert first_trial(output) == proposed  # the seed fixes the proposals
    (run_dir,) = (search_dir / "runs").iterdir()  # no orphan: the killed trial's run went on
    assert "Resuming" in output and len(pd.read_csv(run_dir / "history.csv")) == 2
    assert json.loads((search_dir / "tuning.json").read_text())["results"]["0"]["run_dir"] == str(run_dir)
    # A fresh search with the same seed proposes the same first trial.
    assert run_main("tune", *search, "--trials", 1) == 0
    assert first_trial(capsys.readouterr().out) == proposed


def test_tune_without_keras_tuner_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "keras_tuner", None)
    assert run_main("tune", "--model", "cnn", "--config", TINY_CONFIG) == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: tuning needs KerasTuner, which is not installed: pip install -e '.[tune]'"
    )


@pytest.mark.parametrize("trials", ["0", "-1"])
def test_trials_below_one_are_refused_not_taken_for_the_default(trials, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(tuning, "start_search", lambda *arguments: started.append(arguments))
    with pytest.raises(SystemExit) as exit:
        run_main("tune", "--model", "cnn", "--config", TINY_CONFIG, "--trials", trials)
    assert exit.value.code == 2 and started == []
    assert f"argument --trials: expected a whole number of at least 1, got '{trials}'" in capsys.readouterr().err


def test_a_distributed_search_runs_its_trials_on_two_workers(toy_dir, tmp_path):
    """KerasTuner's distributed mode on 127.0.0.1: the chief serves the oracle and writes
    best.yaml, the two workers train the trials into the shared search folder."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    search_dir = tmp_path / "search"
    command = [
        sys.executable,
        REPO_ROOT / "main.py",
        "tune",
        "--model",
        "cnn",
        "--config",
        TINY_CONFIG,
        "--trials",
        3,
        "--data-dir",
        toy_dir,
        "--search-dir",
        search_dir,
    ]
    processes = {
        tuner_id: subprocess.Popen(
            [str(part) for part in command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO_ROOT,
            env={
                **os.environ,
                "KERASTUNER_TUNER_ID": tuner_id,
                "KERASTUNER_ORACLE_IP": "127.0.0.1",
                "KERASTUNER_ORACLE_PORT": str(port),
            },
        )
        for tuner_id in ("chief", "tuner0", "tuner1")
    }
    printed = {tuner_id: process.communicate(timeout=900)[0] for tuner_id, process in processes.items()}
    assert all(process.returncode == 0 for process in processes.values()), printed

    search = json.loads((search_dir / "tuning.json").read_text())
    results = search["results"]
    assert len(results) == 3 and {result["tuner"] for result in results.values()} == {"tuner0", "tuner1"}
    for result in results.values():
        assert Path(result["run_dir"]).parent == search_dir / "runs"
        assert Path(result["run_dir"]).joinpath("training.json").is_file()
        assert not Path(result["run_dir"]).joinpath("predictions.csv").exists()
    assert results[search["best"]["trial"]]["val_balanced_accuracy"] == max(
        result["val_balanced_accuracy"] for result in results.values()
    )
    assert "Best of 3 trials" in printed["chief"] and load_config("cnn", search_dir / "best.yaml").epochs == 1
    assert "Trial" not in printed["chief"] and "Best of" not in printed["tuner0"]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("KERASTUNER_ORACLE_PORT", "abc", "KERASTUNER_ORACLE_PORT='abc': a port is a whole number from 1 to 65535"),
        ("KERASTUNER_ORACLE_PORT", "99999", "KERASTUNER_ORACLE_PORT='99999': a port is a whole number from 1 to 65535"),
        (
            "KERASTUNER_ORACLE_IP",
            "999.1.1.1",
            "KERASTUNER_ORACLE_IP='999.1.1.1': not an IP address or a host name this machine can resolve",
        ),
        (
            "KERASTUNER_ORACLE_IP",
            "192.0.2.1",
            "the chief cannot listen on 192.0.2.1:",
        ),  # TEST-NET-1: not this machine's
    ],
)
def test_a_bad_chief_address_is_one_line_before_any_folder_exists(
    variable, value, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(free_port()))
    monkeypatch.setenv(variable, value)
    arguments = ["tune", "--model", "cnn", "--config", TINY_CONFIG, "--trials", 1, "--search-dir", tmp_path / "search"]
    assert run_main(*arguments, "--output-dir", tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {message}") and error.count("\n") == 1, error
    assert not (tmp_path / "search").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("search_folder", ["missing", "made by a chief that is gone"])
def test_a_worker_without_a_chief_says_whom_it_waits_for_and_gives_up_in_one_line(
    search_folder, tmp_path, monkeypatch, capsys
):
    port = free_port()
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(port))
    search_dir = tmp_path / "search"
    if search_folder != "missing":
        search_dir.mkdir()
        config = load_config("cnn", TINY_CONFIG).to_dict()
        (search_dir / "tuning.json").write_text(
            json.dumps(
                {"tuner": "bayesian", "trials": 2, "trial_config": config, "final_config": config, "results": {}}
            )
        )
    arguments = ["tune", "--model", "cnn", "--config", TINY_CONFIG, "--search-dir", search_dir, "--chief-timeout", 2]
    assert run_main(*arguments) == 2
    captured = capsys.readouterr()
    assert (
        f"Worker tuner0: waiting for the chief at 127.0.0.1:{port} and its {search_dir / 'tuning.json'} (at most 2 s: --chief-timeout)"
        in captured.out
    )
    expected = (
        "no tuning.json after 2 s"
        if search_folder == "missing"
        else f"no chief answered at 127.0.0.1:{port} within 2 s"
    )
    assert expected in captured.err and captured.err.count("\n") == 1, captured.err


def test_a_distributed_search_needs_all_its_variables_and_a_search_folder(monkeypatch, capsys):
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    assert run_main("tune", "--model", "cnn", "--config", TINY_CONFIG) == 2
    assert (
        "error: a distributed search needs KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT; KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_PORT not set"
        in capsys.readouterr().err
    )
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    assert run_main("tune", "--model", "cnn", "--config", TINY_CONFIG) == 2
    assert "error: a distributed search needs --search-dir DIR" in capsys.readouterr().err
