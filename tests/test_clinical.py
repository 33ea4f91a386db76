"""The clinical evaluation against values known by construction or computed by hand: a temperature
recovered from synthetic logits, a threshold at exactly the target sensitivity, subgroup counts on a
toy table, conformal coverage within its guarantee, and a run folder from before calibration.json."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.run_folder import CALIBRATED_PREDICTIONS_FILENAME, CALIBRATION_FILENAME, VAL_PREDICTIONS_FILENAME
from dataset.metadata import CLASS_NAMES
from evaluation.calibration import (
    adaptive_calibration_error,
    apply_temperature,
    brier_score,
    fit_temperature,
    negative_log_likelihood,
)
from evaluation.operating_points import operating_points, threshold_for_sensitivity
from evaluation.selective import (
    conformal_quantile,
    conformal_thresholds,
    prediction_sets,
    risk_coverage,
    set_evaluation,
)
from evaluation.subgroups import age_band, site_group, subgroup_metrics

MEL, NV, BCC = (CLASS_NAMES.index(name) for name in ("mel", "nv", "bcc"))
REFERENCE_RUN = Path(__file__).resolve().parent.parent / "results" / "reference" / "runs" / "cnn-fold0"


def softmax(logits):
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def test_a_known_temperature_is_recovered_from_synthetic_logits():
    # Labels drawn from softmax(z); the model reports softmax(2 z), over-confident by T = 2.
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(20000, len(CLASS_NAMES)))
    y_true = np.array([rng.choice(len(CLASS_NAMES), p=row) for row in softmax(logits)])
    overconfident = softmax(2 * logits)
    temperature = fit_temperature(y_true, overconfident)
    assert temperature == pytest.approx(2.0, rel=0.03)
    calibrated = apply_temperature(overconfident, temperature)
    np.testing.assert_array_equal(calibrated.argmax(axis=1), overconfident.argmax(axis=1))
    assert negative_log_likelihood(y_true, calibrated) < negative_log_likelihood(y_true, overconfident)
    np.testing.assert_allclose(apply_temperature(overconfident, 2.0), softmax(logits), atol=1e-9)


def test_brier_and_adaptive_calibration_error_by_hand():
    # Two images: (0.8, 0.2, 0...) true 0 and (0.6, 0.4, 0...) true 1.
    probabilities = np.zeros((2, len(CLASS_NAMES)))
    probabilities[0, :2], probabilities[1, :2] = (0.8, 0.2), (0.6, 0.4)
    y_true = np.array([0, 1])
    # (0.2² + 0.2²) and (0.6² + 0.6²), averaged: (0.08 + 0.72) / 2.
    assert brier_score(y_true, probabilities) == pytest.approx(0.4)
    # Two bins of one image each: |1 - 0.8| and |0 - 0.6|, over 2 images.
    assert adaptive_calibration_error(y_true, probabilities, bins=2) == pytest.approx(0.4)
    # One bin: |1 - 0.8 + 0 - 0.6| / 2.
    assert adaptive_calibration_error(y_true, probabilities, bins=1) == pytest.approx(0.2)


def test_threshold_at_exactly_the_target_sensitivity_on_a_hand_made_validation_set():
    # Ten melanomas scored 0.95, 0.90, ..., 0.50; 0.9 of them is 9: the 9th highest, 0.55.
    scores = np.r_[np.linspace(0.95, 0.50, 10), [0.6, 0.3, 0.2, 0.1]]
    positive = np.r_[np.ones(10, dtype=bool), np.zeros(4, dtype=bool)]
    assert threshold_for_sensitivity(scores, positive, 0.90) == pytest.approx(0.55)
    # 0.95 of 10 is 9.5: all ten are needed, down to 0.50.
    assert threshold_for_sensitivity(scores, positive, 0.95) == pytest.approx(0.50)
    assert threshold_for_sensitivity(scores, np.zeros(14, dtype=bool), 0.90) is None


def test_operating_points_score_the_validation_threshold_on_the_test_images():
    def images(p_mel, labels):
        probabilities = np.zeros((len(p_mel), len(CLASS_NAMES)))
        probabilities[:, MEL] = p_mel
        probabilities[:, NV] = 1 - np.asarray(p_mel)
        return np.array(labels), probabilities

    # Validation: ten melanomas 0.95..0.50 (threshold 0.55 for 0.90), three naevi.
    val_y, val_p = images(np.r_[np.linspace(0.95, 0.50, 10), [0.6, 0.3, 0.2]], [MEL] * 10 + [NV] * 3)
    # Test: melanomas 0.9, 0.56, 0.54 (2 of 3 found); naevi 0.7, 0.1, 0.2, 0.3 (3 of 4 not called).
    test_y, test_p = images([0.9, 0.56, 0.54, 0.7, 0.1, 0.2, 0.3], [MEL] * 3 + [NV] * 4)
    points = operating_points(val_y, val_p, test_y, test_p, bootstrap_draws=50)
    point = points["melanoma"]["points"][0]
    assert point["target"] == 0.90 and point["threshold"] == pytest.approx(0.55)
    assert point["val_sensitivity"] == pytest.approx(0.9) and point["val_specificity"] == pytest.approx(2 / 3)
    assert point["sensitivity"] == pytest.approx(2 / 3) and point["specificity"] == pytest.approx(3 / 4)
    assert point["intervals"]["specificity"]["low"] <= 0.75 <= point["intervals"]["specificity"]["high"]
    # No bcc or akiec: the malignant screen is the melanoma screen here.
    assert points["malignant"]["points"][0]["threshold"] == pytest.approx(0.55)


def test_subgroup_bands_sites_counts_and_metrics_on_a_toy_table():
    assert [age_band(age) for age in (5, 29.9, 30, 49, 50, 69, 70, 90, np.nan)] == [
        "< 30",
        "< 30",
        "30–49",
        "30–49",
        "50–69",
        "50–69",
        "≥ 70",
        "≥ 70",
        "unknown",
    ]
    assert [site_group(site) for site in ("scalp", "back", "hand", "foot", "acral", "genital", "unknown")] == [
        "head/neck",
        "trunk",
        "acral",
        "acral",
        "acral",
        "other/unknown",
        "other/unknown",
    ]
    # 40 female images all right; 40 male: the naevi right, the melanomas wrong.
    y_true = np.array([MEL, NV] * 40)
    y_pred = y_true.copy()
    y_pred[40:][y_true[40:] == MEL] = NV
    probabilities = np.eye(len(CLASS_NAMES))[y_pred]
    metadata = pd.DataFrame(
        {
            "sex": ["female"] * 40 + ["male"] * 40,
            "age": [25.0] * 20 + [np.nan] * 20 + [75.0] * 40,
            "localization": ["face"] * 80,
        }
    )
    result = subgroup_metrics(y_true, probabilities, metadata, bootstrap_draws=100, permutations=200)
    sex = result["sex"]
    assert {group: entry["n_images"] for group, entry in sex["groups"].items()} == {"female": 40, "male": 40}
    assert (
        sex["groups"]["female"]["balanced_accuracy"] == 1.0 and sex["groups"]["female"]["melanoma_sensitivity"] == 1.0
    )
    # Male: naevi recall 1, melanoma recall 0.
    assert sex["groups"]["male"]["balanced_accuracy"] == 0.5 and sex["groups"]["male"]["melanoma_sensitivity"] == 0.0
    assert (sex["gap"]["best"], sex["gap"]["worst"], sex["gap"]["balanced_accuracy_gap"]) == ("female", "male", 0.5)
    # A gap this size in 80 images is never reached with sex shuffled.
    assert sex["gap"]["p_value"] == pytest.approx(1 / 201)
    assert list(result["age"]["groups"]) == ["< 30", "≥ 70", "unknown"]
    assert result["age"]["groups"]["unknown"]["n_images"] == 20
    # One comparable site group only: no gap.
    assert result["site"]["gap"] is None


def test_conformal_sets_cover_at_their_level_on_synthetic_data():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1.5, size=(6000, len(CLASS_NAMES)))
    probabilities = softmax(logits)
    y_true = np.array([rng.choice(len(CLASS_NAMES), p=row) for row in probabilities])
    calibration, test = slice(0, 3000), slice(3000, None)
    thresholds = conformal_thresholds(y_true[calibration], probabilities[calibration])
    for level, kinds in thresholds.items():
        for kind, threshold in kinds.items():
            evaluation = set_evaluation(y_true[test], prediction_sets(probabilities[test], threshold))
            # The guarantee is at least the level in expectation; 3,000 test images put the
            # empirical coverage within about 0.015 of it.
            assert evaluation["coverage"] >= float(level) - 0.015, (level, kind)
            if kind == "class_conditional":
                for name, entry in evaluation["per_class"].items():
                    assert entry["coverage"] >= float(level) - 0.06, (level, name)


def test_conformal_quantile_and_risk_coverage_by_hand():
    # n = 9, alpha 0.1: ceil(10 * 0.9) = 9, the largest score; n = 8: rank 9 > 8, every class.
    assert conformal_quantile(np.arange(1, 10) / 10, 0.1) == pytest.approx(0.9)
    assert conformal_quantile(np.arange(1, 9) / 10, 0.1) == 1.0
    # Confidence 0.9 (right), 0.8 (wrong), 0.7 (right): risks 0, 1/2, 1/3.
    probabilities = np.zeros((3, len(CLASS_NAMES)))
    probabilities[:, MEL], probabilities[:, NV] = (0.9, 0.8, 0.7), (0.1, 0.2, 0.3)
    coverage, risk, aurc = risk_coverage(np.array([MEL, NV, MEL]), probabilities)
    np.testing.assert_allclose(coverage, [1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(risk, [0, 1 / 2, 1 / 3])
    assert aurc == pytest.approx((0 + 1 / 2 + 1 / 3) / 3)


def test_a_run_evaluated_before_calibration_json_gets_it_from_its_validation_predictions(tmp_path):
    from evaluation import evaluate_run

    run_dir = tmp_path / "cnn-fold0"
    shutil.copytree(REFERENCE_RUN, run_dir)
    assert not (run_dir / CALIBRATION_FILENAME).exists()
    metrics = evaluate_run(run_dir)
    calibration = json.loads((run_dir / CALIBRATION_FILENAME).read_text())
    assert calibration["fitted_on"].endswith(f"({VAL_PREDICTIONS_FILENAME})")
    assert metrics["clinical"]["calibration"]["temperature"] == calibration["temperature"]
    assert (
        metrics["clinical"]["calibration"]["after"]["nll"] <= metrics["clinical"]["calibration"]["before"]["nll"] + 0.05
    )
    assert (run_dir / CALIBRATED_PREDICTIONS_FILENAME).is_file()
    report = (run_dir / "report.md").read_text()
    for heading in ("## Calibration", "## Operating points", "## Selective prediction and conformal sets"):
        assert heading in report
    # Read, not fitted again: a stored temperature is the one used.
    calibration["temperature"] = 1.0
    (run_dir / CALIBRATION_FILENAME).write_text(json.dumps(calibration))
    assert evaluate_run(run_dir)["clinical"]["calibration"]["temperature"] == 1.0


def test_a_run_without_validation_predictions_is_evaluated_without_the_fitted_sections(tmp_path):
    from evaluation import evaluate_run

    run_dir = tmp_path / "cnn-fold0"
    shutil.copytree(REFERENCE_RUN, run_dir)
    (run_dir / VAL_PREDICTIONS_FILENAME).unlink()
    clinical = evaluate_run(run_dir)["clinical"]
    assert (
        "temperature" not in clinical["calibration"]
        and "operating_points" not in clinical
        and "conformal" not in clinical
    )
    assert clinical["selective"]["aurc"] > 0
    assert "no validation predictions" in (run_dir / "report.md").read_text()


def test_the_catalogue_reads_the_clinical_headline_and_the_summary_shows_it():
    from evaluation.catalogue import BY_KEY, CLINICAL, keys_shown
    from evaluation.clinical import clinical_summary_sections

    clinical = {
        "calibration": {"temperature": 1.5, "before": {"ece_fixed": 0.1}, "after": {"ece_fixed": 0.03}},
        "operating_points": {
            "melanoma": {
                "points": [
                    {"target": 0.9, "specificity": 0.7, "intervals": {"specificity": {"low": 0.6, "high": 0.8}}},
                    {"target": 0.95, "specificity": 0.5},
                ]
            }
        },
        "selective": {"aurc": 0.12},
        "conformal": {"0.90": {"marginal": {"coverage": 0.91, "mean_size": 1.8}}},
    }
    metrics = {"clinical": clinical}
    assert {key: BY_KEY[key].value_in(metrics) for key in keys_shown(CLINICAL)} == {
        "temperature": 1.5,
        "ece_raw": 0.1,
        "ece_calibrated": 0.03,
        "melanoma_specificity_at_0.90": 0.7,
        "melanoma_specificity_at_0.95": 0.5,
        "aurc": 0.12,
        "conformal_coverage_0.90": 0.91,
        "conformal_size_0.90": 1.8,
    }
    assert BY_KEY["melanoma_specificity_at_0.90"].interval_in(metrics) == {"low": 0.6, "high": 0.8}
    assert BY_KEY["melanoma_specificity_at_0.95"].interval_in(metrics) is None
    # A run without validation predictions: no temperature, so no calibrated ECE, operating points or sets.
    before_only = {"clinical": {"calibration": {"before": {"ece_fixed": 0.1}}, "selective": {"aurc": 0.12}}}
    assert [BY_KEY[key].value_in(before_only) for key in keys_shown(CLINICAL)] == [
        None,
        0.1,
        None,
        None,
        None,
        0.12,
        None,
        None,
    ]

    sections = clinical_summary_sections({"densenet": {"clinical": clinical}}, "ensembles")
    table = next(section for section in sections if section.startswith("| configuration"))
    assert (
        "| ECE calibrated |" in table.splitlines()[0]
        and "| melanoma specificity at sensitivity 0.90 |" in table.splitlines()[0]
    )
    assert (
        table.splitlines()[2]
        == "| densenet | 1.500 | 0.100 | 0.030 | 0.700 [0.600, 0.800] | 0.500 – | 0.120 | 0.910 | 1.800 |"
    )
