"""Studies: K lesion-grouped folds and repeated seeds on one split, their summary, paired tests, and resuming."""

import json
import math
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_CONFIG, run_main
from scipy import stats
from test_reliability import interrupt_after

from common.errors import DataError
from dataset import assign_folds, class_indices, fold_subsets, load_split, make_split, prepare_data, save_split
from dataset.images import read_image
from evaluation import Predictor, compute_metrics, read_predictions
from evaluation.calibration import apply_temperature
from evaluation.predictions import PROBABILITY_COLUMNS
from evaluation.study import nadeau_bengio_test, paired_t_test, summarize_study
from inference.predict import collect_images, decode_images
from training import load_config
from training.study import start_study


@pytest.fixture(scope="module")
def fold_study(toy_dir, tmp_path_factory):
    """`--model cnn --folds 3 --epochs 2` in three sittings: killed during the second run's first epoch,
    continued with `--resume STUDY_DIR` and killed during the third run's first epoch, then finished
    by the same command again.

    Returns (output folder, study folder, the first run's model's mtime after the first sitting,
    what the second and third sittings printed).
    """
    output = tmp_path_factory.mktemp("fold_study")
    arguments = [
        "--model",
        "cnn",
        "--folds",
        3,
        "--config",
        TINY_CONFIG,
        "--epochs",
        2,
        "--data-dir",
        toy_dir,
        "--output-dir",
        output,
    ]
    with pytest.MonkeyPatch.context() as patch:
        interrupt_after(patch, 3)  # the first run's two epochs, then the second run's first
        assert run_main(*arguments) == 130
    (study_dir,) = (output / "studies").iterdir()
    first_model = Path(study_runs(study_dir)[0]["run_dir"]) / "model.keras"
    first_mtime = first_model.stat().st_mtime_ns
    printed = []
    for command, epochs in ((["--resume", study_dir], 2), (arguments, None)):
        with pytest.MonkeyPatch.context() as patch:
            lines = []
            patch.setattr("builtins.print", lambda *parts, **options: lines.append(" ".join(map(str, parts))))
            if epochs:
                interrupt_after(patch, epochs)  # the second run's last epoch, then the third run's first
            assert run_main(*command) == (130 if epochs else 0)
        printed.append("\n".join(lines))
    return output, study_dir, (first_model, first_mtime), printed


def study_runs(study_dir):
    return json.loads((study_dir / "study.json").read_text())["runs"]


def test_fold_study_writes_a_run_per_fold_and_a_summary(fold_study):
    output, study_dir, _, _ = fold_study
    assert study_dir.name.endswith("-cnn-3folds")
    runs = study_runs(study_dir)
    assert [(run["fold"], run["seed"], run["finished"]) for run in runs] == [(0, 0, True), (1, 0, True), (2, 0, True)]
    assert sorted(run["run_dir"] for run in runs) == sorted(str(path) for path in (output / "runs").iterdir())
    for name in ("study.yaml", "split.csv", "summary/summary.md", "summary/summary.json", "summary/spread.png"):
        assert (study_dir / name).stat().st_size > 0
    # Each run's split.csv is self-contained: its fold as "val", the others as "train", and the folds.
    for run in runs:
        split = load_split(f"{run['run_dir']}/split.csv")
        assert (split.loc[split["subset"] == "val", "fold"] == run["fold"]).all()
        assert (split.loc[split["subset"] == "train", "fold"] != run["fold"]).all()
        assert split.drop(columns="subset").equals(load_split(study_dir / "split.csv").drop(columns="subset"))


def test_summary_numbers_are_recomputed_from_the_runs_predictions(fold_study):
    _, study_dir, _, _ = fold_study
    summary = json.loads((study_dir / "summary" / "summary.json").read_text())
    (cnn,) = summary["configurations"].values()
    scores = []
    for run in study_runs(study_dir):
        _, y_true, probabilities = read_predictions(f"{run['run_dir']}/predictions.csv")
        scores.append(compute_metrics(y_true, probabilities, bootstrap_draws=0)["balanced_accuracy"])
        metrics = json.loads(open(f"{run['run_dir']}/metrics.json").read())
        assert metrics["balanced_accuracy"] == pytest.approx(scores[-1])
    spread = cnn["spread"]["balanced_accuracy"]
    assert spread["mean"] == pytest.approx(np.mean(scores)) and spread["sd"] == pytest.approx(np.std(scores, ddof=1))
    assert (spread["min"], spread["max"], spread["n"]) == (pytest.approx(min(scores)), pytest.approx(max(scores)), 3)
    # Out of fold: every non-test image once, scored by the model of its own fold.
    validation = pd.concat(pd.read_csv(f"{run['run_dir']}/val_predictions.csv") for run in study_runs(study_dir))
    split = load_split(study_dir / "split.csv")
    assert sorted(validation["image_id"]) == sorted(split.loc[split["fold"] >= 0, "image_id"])
    y_val, p_val = class_indices(validation["dx"]), validation.filter(like="prob_").to_numpy()
    assert cnn["out_of_fold"]["balanced_accuracy"] == pytest.approx(
        compute_metrics(y_val, p_val, bootstrap_draws=0)["balanced_accuracy"]
    )
    assert "cnn | 3 |" in (study_dir / "summary" / "summary.md").read_text()


def test_ensemble_is_the_mean_of_the_members_probabilities(fold_study):
    _, study_dir, _, _ = fold_study
    members = [read_predictions(f"{run['run_dir']}/predictions.csv") for run in study_runs(study_dir)]
    ensemble, y_true, probabilities = read_predictions(study_dir / "summary" / "ensembles" / "cnn" / "predictions.csv")
    order = [member[0].set_index("image_id").index.get_indexer(ensemble["image_id"]) for member in members]
    expected = np.mean([member[2][rows] for member, rows in zip(members, order)], axis=0)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    metrics = json.loads((study_dir / "summary" / "ensembles" / "cnn" / "metrics.json").read_text())
    assert metrics["balanced_accuracy"] == pytest.approx(
        compute_metrics(y_true, expected, bootstrap_draws=0)["balanced_accuracy"]
    )
    assert metrics["intervals"]["balanced_accuracy"]["draws"] > 0


def test_a_study_moved_with_its_runs_is_summarised_as_where_it_was_made(fold_study, tmp_path):
    # As results/reference/ is kept: the runs inside the study folder, study.json naming them relatively.
    _, study_dir, _, _ = fold_study
    moved = tmp_path / "reference"
    shutil.copytree(study_dir, moved, ignore=shutil.ignore_patterns("summary"))
    study = json.loads((moved / "study.json").read_text())
    for run in study["runs"]:
        shutil.copytree(
            run["run_dir"],
            moved / "runs" / Path(run["run_dir"]).name,
            ignore=shutil.ignore_patterns("*.keras", "checkpoint"),
        )
        run["run_dir"] = f"runs/{Path(run['run_dir']).name}"
    (moved / "study.json").write_text(json.dumps(study))
    summarize_study(moved, verbose=False)
    made, remade = (json.loads((folder / "summary" / "summary.json").read_text()) for folder in (study_dir, moved))
    for key in ("spread", "ensemble", "out_of_fold"):
        assert remade["configurations"]["cnn"][key] == made["configurations"]["cnn"][key]


def test_killed_study_resumes_without_retraining_its_finished_runs(fold_study):
    output, study_dir, (first_model, first_mtime), (second_sitting, third_sitting) = fold_study
    first, second, third = (run["run_dir"] for run in study_runs(study_dir))
    assert first_model.stat().st_mtime_ns == first_mtime  # the first run was not retrained
    # --resume STUDY_DIR: the first run kept, the second resumed from its epoch.
    assert f"run 1 of 3 (cnn fold 0 seed 0): finished in {first}, kept" in second_sitting
    assert "run 2 of 3 (cnn fold 1 seed 0); ETA for the study ~" in second_sitting  # from the first run's time
    assert f"Resuming {second.split('/')[-1]} after epoch 1" in second_sitting
    assert "run 3 of 3 (cnn fold 2 seed 0); ETA for the study ~" in second_sitting
    # The same command again: the study it started is continued, not a new one.
    assert f"Continuing {study_dir}, which the same command started" in third_sitting
    assert f"run 2 of 3 (cnn fold 1 seed 0): finished in {second}, kept" in third_sitting
    assert f"Resuming {third.split('/')[-1]} after epoch 1" in third_sitting
    assert all(len(pd.read_csv(f"{run}/history.csv")) == 2 for run in (first, second, third))
    assert len(list((output / "runs").iterdir())) == 3 and len(list((output / "studies").iterdir())) == 1
    assert not (study_dir / "run.lock").exists()  # each sitting let go of the study as it ended


def test_a_second_process_on_a_study_is_refused_naming_the_first(toy_dir, tmp_path, capsys):
    config = load_config("cnn", TINY_CONFIG, {"data_dir": str(toy_dir), "output_dir": str(tmp_path)})
    study_dir = start_study([config], folds=2, name="cnn-2folds", settings={})
    planned = (study_dir / "study.json").read_text()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # the first process, at work
    try:
        (study_dir / "run.lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
        assert run_main("--resume", study_dir) == 2
        error = capsys.readouterr().err
        assert (
            error.count("\n") == 1 and f"process {holder.pid} on {socket.gethostname()} is training this study" in error
        )
    finally:
        holder.kill()
        holder.wait()
    assert (study_dir / "study.json").read_text() == planned and not (tmp_path / "runs").exists()


def test_seeds_give_runs_of_other_seeds_on_one_split(fold_study, toy_dir, tmp_path, capsys):
    _, fold_study_dir, _, _ = fold_study
    arguments = [
        "--model",
        "cnn",
        "--seeds",
        2,
        "--config",
        TINY_CONFIG,
        "--data-dir",
        toy_dir,
        "--output-dir",
        tmp_path,
    ]
    # The fold study's split: the two studies then share their test subset, and can be compared.
    assert run_main(*arguments, "--split", fold_study_dir / "split.csv") == 0
    (study_dir,) = (tmp_path / "studies").iterdir()
    assert study_dir.name.endswith("-cnn-2seeds")
    runs = study_runs(study_dir)
    assert [(run["fold"], run["seed"]) for run in runs] == [(None, 0), (None, 1)]
    configs = [pd.read_csv(f"{run['run_dir']}/split.csv") for run in runs]
    assert configs[0].equals(configs[1])
    histories = [pd.read_csv(f"{run['run_dir']}/history.csv") for run in runs]
    assert histories[0]["loss"].iloc[0] != histories[1]["loss"].iloc[0]  # other initial weights and sampling
    assert "seed: 1" in open(f"{runs[1]['run_dir']}/config.yaml").read()

    assert run_main("compare", fold_study_dir, study_dir, "--output", tmp_path / "comparison") == 0
    summary = json.loads((tmp_path / "comparison" / "summary.json").read_text())
    assert list(summary["configurations"]) == [f"{fold_study_dir.name}/cnn", f"{study_dir.name}/cnn"]
    (pair,) = summary["pairs"]
    assert (
        pair["ensembles"]["mcnemar"]["p_value"] <= 1 and pair["paired_over_runs"] is None
    )  # no (fold, seed) in common
    assert (tmp_path / "comparison" / "comparison" / "comparison.md").is_file()


def test_compare_refuses_runs_and_studies_mixed(fold_study, capsys):
    _, study_dir, _, _ = fold_study
    assert run_main("compare", study_dir, study_runs(study_dir)[0]["run_dir"]) == 2
    assert "not both" in capsys.readouterr().err


# === Folds ===


def test_no_lesion_in_two_folds_or_in_a_fold_and_the_test_subset(ham_metadata):
    split = assign_folds(make_split(ham_metadata, seed=0), 5, seed=0)
    assert split.groupby("lesion_id")["fold"].nunique().max() == 1
    assert ((split["fold"] == -1) == (split["subset"] == "test")).all()
    assert sorted(set(split["fold"])) == [-1, 0, 1, 2, 3, 4]
    # Stratified: every fold within a point of every class's share.
    rest = split[split["fold"] >= 0]
    shares = pd.crosstab(rest["fold"], rest["dx"], normalize="index")
    assert (shares - rest["dx"].value_counts(normalize=True)).abs().max().max() < 0.01
    assert assign_folds(make_split(ham_metadata, seed=0), 5, seed=0).equals(split)


def test_fold_split_round_trips_and_damaged_folds_are_refused(ham_metadata, tmp_path):
    split = assign_folds(make_split(ham_metadata, seed=0), 3, seed=0)
    save_split(split, tmp_path / "split.csv")
    assert load_split(tmp_path / "split.csv", ham_metadata).equals(split)
    assert (fold_subsets(split, 2)["subset"] == "val").sum() == (split["fold"] == 2).sum()
    with pytest.raises(DataError, match="there is no fold 3"):
        fold_subsets(split, 3)
    leaking = split.copy()
    lesion = leaking.loc[(leaking["fold"] >= 0) & leaking["lesion_id"].duplicated(keep=False), "lesion_id"].iloc[0]
    rows = leaking.index[leaking["lesion_id"] == lesion]
    leaking.loc[rows[0], "fold"], leaking.loc[rows[1], "fold"] = 0, 1
    save_split(leaking, tmp_path / "leaking.csv")
    with pytest.raises(DataError, match="lesions are in more than one fold"):
        load_split(tmp_path / "leaking.csv")
    test_row = split.index[split["subset"] == "test"][0]
    split.loc[test_row, "fold"] = 1
    save_split(split, tmp_path / "test_in_fold.csv")
    with pytest.raises(DataError, match=r"fold '1' for a test image \(expected -1 for test images"):
        load_split(tmp_path / "test_in_fold.csv")


def test_a_limited_split_is_reused_by_runs_of_other_seeds(toy_dir, tmp_path):
    first = prepare_data(toy_dir, image_size=32, limit=40, seed=0, verbose=False)
    save_split(first.split, tmp_path / "split.csv")
    # Seed 1 alone would draw another 40 images; with the split, it takes the split's.
    other = prepare_data(toy_dir, image_size=32, limit=40, seed=1, split_file=tmp_path / "split.csv", verbose=False)
    assert other.split.equals(first.split)


# === Paired tests ===


def test_nadeau_bengio_statistic_against_a_hand_computation():
    differences = [0.02, 0.03, 0.01]  # mean 0.02, sample variance 0.0001
    result = nadeau_bengio_test(differences, test_train_ratio=0.25)
    t = 0.02 / math.sqrt((1 / 3 + 0.25) * 0.0001)  # 2.6186
    assert result["t"] == pytest.approx(t) and result["t"] == pytest.approx(2.6186, abs=1e-4)
    # Student's t with 2 degrees of freedom has a closed-form tail: P(|T| > t) = 1 - t / sqrt(t² + 2).
    assert result["p_value"] == pytest.approx(1 - t / math.sqrt(t**2 + 2)) and result["df"] == 2
    # The correction widens the test: without it, this is the paired t-test.
    plain = paired_t_test(differences)
    expected = stats.ttest_1samp(differences, 0.0)
    assert (plain["t"], plain["p_value"]) == (pytest.approx(expected.statistic), pytest.approx(expected.pvalue))
    assert result["p_value"] > plain["p_value"]
    assert nadeau_bengio_test([0.01, 0.01], 0.25)["p_value"] is None  # no spread to test against


def test_a_fold_study_predicts_and_serves_with_the_mean_of_its_fold_models(fold_study, toy_dir, tmp_path, capsys):
    _, study_dir, _, _ = fold_study
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted((toy_dir / "images").iterdir())[:5]:
        shutil.copy(path, folder)
    # `main.py predict STUDY_DIR` (one configuration, so it need not be named) with the fold ensemble.
    assert run_main("predict", study_dir, folder, "--output", tmp_path / "ensemble.csv") == 0
    ensemble = pd.read_csv(tmp_path / "ensemble.csv").filter(like="prob_").to_numpy()
    images = decode_images(collect_images([folder]), 32)[0]
    folds = [Predictor.load(run["run_dir"]).predict(images) for run in study_runs(study_dir)]
    np.testing.assert_allclose(ensemble, np.mean(folds, axis=0), atol=1e-6)
    assert not np.allclose(folds[0], folds[1])  # three different models, not one three times

    predictor = Predictor.load(study_dir / "cnn")  # the same, named
    assert (predictor.name, len(predictor.members)) == (f"{study_dir.name}/cnn", 3)
    tta_folds = [Predictor.load(run["run_dir"]).predict(images, tta=True) for run in study_runs(study_dir)]
    np.testing.assert_allclose(predictor.predict(images, tta=True), np.mean(tta_folds, axis=0), atol=1e-6)
    with pytest.raises(DataError, match=r"has no finished run of a configuration 'densenet' \(it holds cnn\)$"):
        Predictor.load(study_dir / "densenet")

    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
    from fastapi.testclient import TestClient

    from inference.app import create_app

    client = TestClient(create_app(study_dir))
    model = client.get("/model").json()
    ensemble_metrics = json.loads((study_dir / "summary" / "ensembles" / "cnn" / "metrics.json").read_text())
    assert (model["run"], model["models"]) == (f"{study_dir.name}/cnn", 3)
    assert model["test_metrics"]["balanced_accuracy"] == ensemble_metrics["balanced_accuracy"]
    first = sorted(folder.iterdir())[0]
    answer = client.post(
        "/predict", files={"image": (first.name, first.read_bytes(), "image/jpeg")}, data={"explain": "true"}
    ).json()
    np.testing.assert_allclose(
        [answer["probabilities"][column[5:]] for column in PROBABILITY_COLUMNS], ensemble[0], atol=1e-6
    )
    assert answer["gradcam_png"].startswith("data:image/png;base64,")


def test_a_fold_ensemble_is_evaluated_on_an_external_set_and_predicts_calibrated(fold_study, toy_dir, tmp_path, capsys):
    _, study_dir, _, _ = fold_study
    clinic = tmp_path / "clinic"
    (clinic / "images").mkdir(parents=True)
    labels = pd.read_csv(toy_dir / "HAM10000_metadata.csv").groupby("dx").head(4)
    for image_id in labels["image_id"]:
        shutil.copy(toy_dir / "images" / f"{image_id}.jpg", clinic / "images")
    labels.to_csv(clinic / "HAM10000_metadata.csv", index=False)
    assert run_main("evaluate", study_dir / "cnn", "--data-dir", clinic) == 0

    output = study_dir / "external" / "cnn" / "clinic"
    predictions = pd.read_csv(output / "predictions.csv")
    assert sorted(predictions["image_id"]) == sorted(labels["image_id"])
    images = np.stack([read_image(clinic / "images" / f"{image_id}.jpg", 32) for image_id in predictions["image_id"]])
    folds = [Predictor.load(run["run_dir"]).predict(images) for run in study_runs(study_dir)]
    np.testing.assert_allclose(predictions.filter(like="prob_").to_numpy(), np.mean(folds, axis=0), atol=1e-5)
    # Calibrated as the summary calibrated the ensemble: on the fold runs' pooled out-of-fold predictions.
    clinical = json.loads((output / "metrics.json").read_text())["clinical"]
    summary_calibration = json.loads((study_dir / "summary" / "ensembles" / "cnn" / "calibration.json").read_text())
    assert json.loads((output / "calibration.json").read_text()) == summary_calibration
    assert clinical["calibration"]["temperature"] == summary_calibration["temperature"]
    assert {"operating_points", "conformal", "subgroups"} <= set(clinical)
    # The subgroups are the external images' own sexes, from their labels file.
    sexes = {group: entry["n_images"] for group, entry in clinical["subgroups"]["sex"]["groups"].items()}
    assert sexes == labels["sex"].fillna("unknown").value_counts().to_dict()
    report = (output / "report.md").read_text()
    assert report.startswith(f"# External evaluation of {study_dir.name}/cnn, the mean of its 3 runs, on clinic")
    for section in (
        "## Calibration",
        "## Operating points",
        "## Selective prediction and conformal sets",
        "## Subgroups",
    ):
        assert section in report

    # predict --calibrated: the ensemble's mean probabilities with the summary's temperature.
    capsys.readouterr()
    first = clinic / "images" / f"{predictions['image_id'][0]}.jpg"
    assert (
        run_main(
            "predict", study_dir, first, "--calibrated", "--conformal", "0.95", "--output", tmp_path / "calibrated.json"
        )
        == 0
    )
    (record,) = json.loads((tmp_path / "calibrated.json").read_text())
    expected = apply_temperature(np.mean(folds, axis=0)[:1], summary_calibration["temperature"])[0]
    np.testing.assert_allclose([record[f"calibrated_{column}"] for column in PROBABILITY_COLUMNS], expected, atol=1e-5)
    q = summary_calibration["conformal"]["0.95"]["marginal"]
    assert record["conformal_set"] == "|".join(
        column[5:] for column, p in zip(PROBABILITY_COLUMNS, expected) if 1 - p <= q
    )
