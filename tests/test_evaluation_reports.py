"""predictions.csv, the plots, a run's report and the comparison of runs, on toy run folders."""

import json
import re

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml

from common.errors import DataError
from dataset.metadata import CLASS_NAMES
from evaluation import (
    compare_runs,
    compute_metrics,
    evaluate_run,
    predictions_frame,
    read_predictions,
    write_predictions,
)
from evaluation.compare import mcnemar_exact
from evaluation.plots import (
    plot_comparison,
    plot_confusion_matrix,
    plot_per_class,
    plot_roc_curves,
    plot_training_curves,
)

DRAWS = 100  # enough for the code paths; the intervals' statistics are tested in test_evaluation_metrics


def toy_predictions(n=60, accuracy=0.7, seed=0):
    """Image ids, true classes (every class present) and probabilities of a fair classifier."""
    rng = np.random.default_rng(seed)
    y_true = np.arange(n) % len(CLASS_NAMES)
    predicted = np.where(rng.random(n) < accuracy, y_true, rng.integers(0, len(CLASS_NAMES), n))
    probabilities = rng.dirichlet(np.ones(len(CLASS_NAMES)), n) * 0.5
    probabilities[np.arange(n), predicted] += 0.5
    return [f"ISIC_{index:07d}" for index in range(n)], y_true, probabilities


def toy_history(epochs=6):
    epoch = np.arange(1, epochs + 1)
    return pd.DataFrame(
        {
            "epoch": epoch,
            "stage": np.where(epoch <= 3, 1, 2),
            "lr": 1e-3,
            "seconds": 10.0,
            "loss": 2 / epoch,
            "accuracy": 1 - 1 / (epoch + 1),
            "balanced_accuracy": 1 - 1.2 / (epoch + 1),
            "val_loss": 2.2 / epoch,
            "val_accuracy": 0.9 - 1 / (epoch + 1),
            "val_balanced_accuracy": 0.85 - 1 / (epoch + 1),
        }
    )


def write_run(run_dir, image_ids, y_true, probabilities, *, complete=True):
    """A run folder as training leaves it; with `complete=False`, only predictions.csv."""
    run_dir.mkdir(parents=True)
    write_predictions(run_dir / "predictions.csv", predictions_frame(image_ids, y_true, probabilities))
    if not complete:
        return run_dir
    config = {
        "model": "densenet",
        "metadata": False,
        "image_size": 64,
        "seed": 0,
        "epochs": 6,
        "loss": "focal",
        "balance": "combined",
        "an_option_evaluation_does_not_know": 1,
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    training = {
        "best_epoch": 5,
        "best_val_balanced_accuracy": 0.68,
        "epochs_completed": 6,
        "stopped_early": False,
        "wall_time_s": 3725.0,
        "parameters": 1234567,
        "trainable_parameters": 1200000,
        "train_images_per_epoch": 700,
        "stage_boundaries": [3],
    }
    (run_dir / "training.json").write_text(json.dumps(training))
    toy_history().to_csv(run_dir / "history.csv", index=False)
    names = np.array(CLASS_NAMES)[y_true]
    lesion_ids = [f"HAM_{index:07d}" for index in range(len(image_ids))]
    split = pd.DataFrame({"image_id": image_ids, "lesion_id": lesion_ids, "dx": names, "subset": "test"})
    split.to_csv(run_dir / "split.csv", index=False)
    return run_dir


def links(markdown):
    """Targets of every markdown link and image."""
    return re.findall(r"\]\(([^)\s]+)\)", markdown)


# === predictions.csv ===


def test_predictions_round_trip(tmp_path):
    image_ids, y_true, probabilities = toy_predictions()
    write_predictions(tmp_path / "predictions.csv", predictions_frame(image_ids, y_true, probabilities))
    frame, read_y_true, read_probabilities = read_predictions(tmp_path / "predictions.csv")
    assert list(frame["image_id"]) == image_ids
    np.testing.assert_array_equal(read_y_true, y_true)
    np.testing.assert_allclose(read_probabilities, probabilities)
    assert list(frame["pred"]) == [CLASS_NAMES[index] for index in probabilities.argmax(axis=1)]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda frame: frame.drop(columns="prob_mel"), r"predictions\.csv: missing column 'prob_mel'"),
        (
            lambda frame: frame.assign(dx=["melanoma"] + list(frame["dx"][1:])),
            r"predictions\.csv, line 2: unknown dx 'melanoma'",
        ),
        (
            lambda frame: frame.assign(image_id=["a", "b", "a"]),
            r"predictions\.csv, line 4: image_id 'a' appears more than once",
        ),
        (
            lambda frame: frame.assign(pred="vasc"),
            r"predictions\.csv, line 2: pred 'vasc' is not the most probable class",
        ),
    ],
)
def test_malformed_predictions_give_a_one_line_error(tmp_path, edit, message):
    image_ids, y_true, probabilities = toy_predictions(n=3)
    edit(predictions_frame(image_ids, y_true, probabilities)).to_csv(tmp_path / "predictions.csv", index=False)
    with pytest.raises(DataError, match=message) as error:
        read_predictions(tmp_path / "predictions.csv")
    assert "\n" not in str(error.value)


# === Plots ===


@pytest.fixture(scope="module")
def toy_metrics_inputs():
    _, y_true, probabilities = toy_predictions()
    return y_true, probabilities, compute_metrics(y_true, probabilities, bootstrap_draws=DRAWS)


@pytest.mark.parametrize(
    ("draw", "size"),
    [
        (lambda path, y, p, m: plot_confusion_matrix(m["confusion_matrix"], path), (1300, 550)),
        (
            lambda path, y, p, m: plot_training_curves(toy_history(), path, best_epoch=5, stage_boundaries=[3]),
            (1500, 450),
        ),
        (lambda path, y, p, m: plot_per_class(m["per_class"], path), (900, 450)),
        (lambda path, y, p, m: plot_roc_curves(y, p, path), (650, 600)),
        (
            lambda path, y, p, m: plot_comparison({"a": m["confusion_matrix"], "b": m["confusion_matrix"]}, path),
            (1000, 950),
        ),
    ],
    ids=["confusion_matrix", "training_curves", "per_class", "roc_curves", "comparison"],
)
def test_plot_is_a_png_of_the_expected_size(tmp_path, toy_metrics_inputs, draw, size):
    y_true, probabilities, metrics = toy_metrics_inputs
    path = draw(tmp_path / "plot.png", y_true, probabilities, metrics)
    assert path == tmp_path / "plot.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(path).shape
    assert (width, height) == size
    assert [file.name for file in tmp_path.iterdir()] == ["plot.png"]  # no temporary file left


# === A run's report ===


def test_evaluate_run_writes_metrics_plots_and_a_report_linking_them(tmp_path):
    run_dir = write_run(tmp_path / "20250101-120000-densenet", *toy_predictions())
    metrics = evaluate_run(run_dir, bootstrap_draws=DRAWS, seed=3)

    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert metrics["intervals"]["balanced_accuracy"]["seed"] == 3
    report = (run_dir / "report.md").read_text()
    targets = links(report)
    assert {"confusion_matrix.png", "training_curves.png", "per_class.png", "roc_curves.png", "metrics.json"} <= set(
        targets
    )
    assert all((run_dir / target).is_file() for target in targets)
    assert "| epochs run / kept epoch | 6 / 5 |" in report
    assert "| wall time | 1 h 02 min |" in report
    assert "| parameters | 1,234,567 (1,200,000 trainable) |" in report
    assert f"| Balanced accuracy (mean recall over classes) | {metrics['balanced_accuracy']:.3f} |" in report
    assert "| total | 0 | 0 | 60 |" in report  # the split table: images per subset


def test_report_of_predictions_alone_links_only_what_exists(tmp_path):
    run_dir = write_run(tmp_path / "run", *toy_predictions(), complete=False)
    evaluate_run(run_dir, bootstrap_draws=DRAWS)
    targets = links((run_dir / "report.md").read_text())
    assert "training_curves.png" not in targets and not (run_dir / "training_curves.png").exists()
    assert "config.yaml" not in targets
    assert all((run_dir / target).is_file() for target in targets)


def test_report_shows_unpredicted_and_absent_classes_without_nan(tmp_path):
    image_ids, _, _ = toy_predictions(n=4)
    # Four images, all of class akiec or bcc, all predicted bcc: akiec is never predicted, and
    # the other five classes have no test images.
    y_true = np.array([0, 0, 1, 1])
    probabilities = np.full((4, 7), 0.05)
    probabilities[:, 1] = 0.7
    run_dir = write_run(tmp_path / "run", image_ids, y_true, probabilities, complete=False)
    evaluate_run(run_dir, bootstrap_draws=DRAWS)
    report = (run_dir / "report.md").read_text()
    assert "nan" not in report.lower()
    assert "| akiec | actinic keratosis / intraepithelial carcinoma | 0.000 | 0.000 | 0.000 | 0.500 | 2 |" in report
    assert "No test images of bkl, df, mel, nv, vasc" in report
    assert "Never predicted: akiec, bkl, df, mel, nv, vasc" in report


# === Comparison ===


def test_compare_runs_writes_table_json_and_figure(tmp_path):
    image_ids, y_true, probabilities = toy_predictions()
    _, _, other_probabilities = toy_predictions(accuracy=0.4, seed=1)
    first = write_run(tmp_path / "20250101-120000-cnn", image_ids, y_true, probabilities)
    # The same images in another order: compared image by image, not row by row.
    order = np.random.default_rng(0).permutation(len(image_ids))
    second = write_run(
        tmp_path / "20250101-130000-vgg16-meta",
        list(np.array(image_ids)[order]),
        y_true[order],
        other_probabilities[order],
    )

    comparison = compare_runs([first, second], tmp_path / "comparison", bootstrap_draws=DRAWS)

    for name in ("comparison.md", "comparison.json", "comparison.png"):
        assert (tmp_path / "comparison" / name).stat().st_size > 0
    assert json.loads((tmp_path / "comparison" / "comparison.json").read_text()) == comparison
    (pair,) = comparison["pairs"]
    assert (pair["run_a"], pair["run_b"]) == (first.name, second.name)
    assert pair["interval"]["low"] < pair["balanced_accuracy_difference"] < pair["interval"]["high"]
    assert 0 < pair["p_value"] <= 1
    # The paired test matches the runs' own evaluations of the same images.
    own = [
        compute_metrics(*read_predictions(run / "predictions.csv")[1:], bootstrap_draws=DRAWS)["balanced_accuracy"]
        for run in (first, second)
    ]
    assert pair["balanced_accuracy_difference"] == pytest.approx(own[1] - own[0])
    markdown = (tmp_path / "comparison" / "comparison.md").read_text()
    assert all((tmp_path / "comparison" / target).is_file() for target in links(markdown))
    assert first.name in markdown and second.name in markdown


def test_comparison_shows_the_clinical_headline_of_the_runs_that_have_one(tmp_path):
    image_ids, y_true, probabilities = toy_predictions()
    first = write_run(tmp_path / "20250101-120000-cnn", image_ids, y_true, probabilities)
    second = write_run(
        tmp_path / "20250101-130000-densenet", image_ids, y_true, toy_predictions(accuracy=0.4, seed=1)[2]
    )
    # The first run has validation predictions, so its evaluation fits a temperature; the second was evaluated before.
    val_ids, val_y, val_probabilities = toy_predictions(n=70, seed=2)
    write_predictions(first / "val_predictions.csv", predictions_frame(val_ids, val_y, val_probabilities))
    metrics = evaluate_run(first, bootstrap_draws=DRAWS)
    comparison = compare_runs([first, second], tmp_path / "comparison", bootstrap_draws=DRAWS)
    assert comparison["runs"][0]["clinical"] == metrics["clinical"] and comparison["runs"][1]["clinical"] is None
    markdown = (tmp_path / "comparison" / "comparison.md").read_text()
    section = markdown.split("## Clinical evaluation")[1].split("## Paired tests")[0]
    (row,) = [line for line in section.splitlines() if line.startswith(f"| {first.name}")]
    assert f"| {metrics['clinical']['calibration']['temperature']:.3f} |" in row
    assert f"| {metrics['clinical']['calibration']['after']['ece_fixed']:.3f} |" in row
    assert second.name not in section


def test_comparing_a_run_with_a_copy_finds_no_difference(tmp_path):
    predictions = toy_predictions()
    runs = [write_run(tmp_path / name, *predictions, complete=False) for name in ("a", "b")]
    (pair,) = compare_runs(runs, tmp_path / "comparison", bootstrap_draws=DRAWS)["pairs"]
    assert pair["balanced_accuracy_difference"] == 0
    assert pair["p_value"] == 1
    assert pair["mcnemar"] == {"only_a_correct": 0, "only_b_correct": 0, "p_value": 1.0, "test": "exact binomial"}


def test_mcnemar_exact_matches_the_binomial_by_hand():
    # 6 images where exactly one run is right, 5 of them run a: two-sided binomial(6, 1/2)
    # p = 2 * P(X <= 1) = 2 * (1 + 6) / 64 = 0.21875
    correct_a = np.array([True] * 5 + [False] + [True] * 4)
    correct_b = np.array([False] * 5 + [True] + [True] * 4)
    result = mcnemar_exact(correct_a, correct_b)
    assert (result["only_a_correct"], result["only_b_correct"]) == (5, 1)
    assert result["p_value"] == pytest.approx(0.21875)


def test_compare_refuses_runs_evaluated_on_different_test_images(tmp_path):
    image_ids, y_true, probabilities = toy_predictions()
    first = write_run(tmp_path / "run-a", image_ids, y_true, probabilities, complete=False)
    second = write_run(tmp_path / "run-b", image_ids[:-1] + ["ISIC_9999999"], y_true, probabilities, complete=False)
    message = (
        r"^runs run-a and run-b were evaluated on different test images \(60 and 60 images, 59 shared\): "
        r"train them on one split \(--split FILE\)"
    )
    with pytest.raises(DataError, match=message):
        compare_runs([first, second], tmp_path / "comparison", bootstrap_draws=DRAWS)
    assert not (tmp_path / "comparison").exists()


def test_compare_needs_two_runs(tmp_path):
    run = write_run(tmp_path / "run", *toy_predictions(), complete=False)
    with pytest.raises(ValueError, match="at least two runs; got 1"):
        compare_runs([run], tmp_path / "comparison")
