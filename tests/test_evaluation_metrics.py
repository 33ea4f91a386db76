"""Metrics against values computed by hand, and the bootstrap intervals."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from dataset.metadata import CLASS_NAMES
from evaluation.metrics import (
    bootstrap_weights,
    compute_metrics,
    expected_calibration_error,
    mean_of_ratios,
    weighted_auc_parts,
    weighted_hits,
)

AKIEC, MEL, NV = (CLASS_NAMES.index(name) for name in ("akiec", "mel", "nv"))


def hand_example():
    """Six images of three classes; akiec is never predicted, bcc, bkl, df and vasc never occur.

    image  true   P(akiec) P(mel) P(nv)   predicted  confidence
    1      mel    0.05     0.90   0.05    mel  ok    0.90
    2      mel    0.25     0.10   0.65    nv         0.65
    3      nv     0.05     0.10   0.85    nv   ok    0.85
    4      nv     0.00     0.30   0.70    nv   ok    0.70
    5      nv     0.00     0.62   0.38    mel        0.62
    6      akiec  0.30     0.20   0.50    nv         0.50
    """
    y_true = np.array([MEL, MEL, NV, NV, NV, AKIEC])
    probabilities = np.zeros((6, len(CLASS_NAMES)))
    probabilities[:, [AKIEC, MEL, NV]] = [
        [0.05, 0.90, 0.05],
        [0.25, 0.10, 0.65],
        [0.05, 0.10, 0.85],
        [0.00, 0.30, 0.70],
        [0.00, 0.62, 0.38],
        [0.30, 0.20, 0.50],
    ]
    return y_true, probabilities


@pytest.fixture(scope="module")
def hand_metrics():
    y_true, probabilities = hand_example()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a class never predicted or never present must not warn
        return compute_metrics(y_true, probabilities, bootstrap_draws=200, seed=0)


def test_overall_metrics_match_hand_computation(hand_metrics):
    assert hand_metrics["n_images"] == 6
    assert hand_metrics["accuracy"] == pytest.approx(0.5)  # images 1, 3, 4 right: 3 / 6
    # Mean recall over the classes present: (akiec 0/1 + mel 1/2 + nv 2/3) / 3 = 7/18
    assert hand_metrics["balanced_accuracy"] == pytest.approx(0.388889, abs=1e-6)
    # Mean F1 over the classes present: (0 + 0.5 + 4/7) / 3 = 5/14
    assert hand_metrics["macro_f1"] == pytest.approx(0.357143, abs=1e-6)
    # Melanoma: 1 of 2 melanomas found; of 4 other images, 1 (image 5) called melanoma: 3/4
    assert hand_metrics["melanoma_sensitivity"] == pytest.approx(0.5)
    assert hand_metrics["melanoma_specificity"] == pytest.approx(0.75)


def test_auc_matches_hand_computation(hand_metrics):
    per_class = hand_metrics["per_class"]
    # akiec: positive 0.30 beats all 5 negatives (0.05, 0.25, 0.05, 0, 0): 5/5
    assert per_class["akiec"]["auc"] == pytest.approx(1.0)
    # mel: positive 0.90 beats all 4 negatives; 0.10 ties image 3's 0.10 (half) and beats none
    # of 0.30, 0.62, 0.20: (4 + 0.5) / 8
    assert per_class["mel"]["auc"] == pytest.approx(0.5625)
    # nv: 0.85 and 0.70 beat all 3 negatives (0.05, 0.65, 0.50); 0.38 beats one: 7/9
    assert per_class["nv"]["auc"] == pytest.approx(0.777778, abs=1e-6)
    # Macro over the classes present: (1 + 9/16 + 7/9) / 3 = 337/432
    assert hand_metrics["macro_auc"] == pytest.approx(0.780093, abs=1e-6)
    assert all(per_class[name]["auc"] is None for name in ("bcc", "bkl", "df", "vasc"))


def test_per_class_metrics_match_hand_computation(hand_metrics):
    per_class = hand_metrics["per_class"]
    # akiec is never predicted: precision 0 by convention, not NaN
    assert per_class["akiec"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "auc": 1.0, "support": 1}
    # mel: predicted for images 1 and 5, right once: precision 1/2, recall 1/2, F1 1/2
    mel, nv = per_class["mel"], per_class["nv"]
    assert (mel["precision"], mel["recall"], mel["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    # nv: predicted for images 2, 3, 4, 6, right twice: precision 2/4, recall 2/3,
    # F1 2 * (1/2 * 2/3) / (1/2 + 2/3) = 4/7
    assert (nv["precision"], nv["recall"], nv["f1"]) == pytest.approx((0.5, 0.666667, 0.571429), abs=1e-6)
    assert [per_class[name]["support"] for name in CLASS_NAMES] == [1, 0, 0, 0, 2, 3, 0]


def test_confusion_matrix_rows_are_true_classes(hand_metrics):
    expected = np.zeros((7, 7), dtype=int)
    expected[AKIEC, NV] = 1  # image 6
    expected[MEL, MEL] = 1  # image 1
    expected[MEL, NV] = 1  # image 2
    expected[NV, NV] = 2  # images 3, 4
    expected[NV, MEL] = 1  # image 5
    assert hand_metrics["confusion_matrix"] == expected.tolist()


def test_expected_calibration_error_matches_hand_computation(hand_metrics):
    # Bins of width 1/15: 0.62 and 0.65 share (0.600, 0.667], both wrong: |0 + 0 - 0.62 - 0.65| = 1.27;
    # alone in their bins: |1 - 0.90| + |1 - 0.85| + |1 - 0.70| + |0 - 0.50| = 1.05; (1.27 + 1.05) / 6
    assert hand_metrics["expected_calibration_error"] == pytest.approx(0.386667, abs=1e-6)


def test_calibration_error_is_zero_when_confidence_matches_accuracy():
    # Two images at confidence 0.5 in one bin, one right: accuracy 0.5 = confidence 0.5.
    probabilities = np.zeros((2, 7))
    probabilities[:, [AKIEC, MEL]] = 0.5  # ties resolve to the first class, akiec
    assert expected_calibration_error(np.array([AKIEC, MEL]), probabilities) == pytest.approx(0.0)


def test_metrics_are_json_ready_without_nan(hand_metrics):
    def values(item):
        if isinstance(item, dict):
            return [value for child in item.values() for value in values(child)]
        if isinstance(item, list):
            return [value for child in item for value in values(child)]
        return [item]

    numbers = [value for value in values(hand_metrics) if isinstance(value, float)]
    assert numbers and not any(np.isnan(numbers))


def test_undefined_melanoma_metrics_are_none():
    y_true, probabilities = hand_example()
    without_melanoma = y_true != MEL
    metrics = compute_metrics(y_true[without_melanoma], probabilities[without_melanoma], bootstrap_draws=50)
    assert metrics["melanoma_sensitivity"] is None
    assert metrics["intervals"]["melanoma_sensitivity"] is None
    assert metrics["melanoma_specificity"] == pytest.approx(0.75)  # image 5 of 4 non-melanomas


def random_predictions(n=400, seed=1):
    """A noisy but informative classifier on HAM10000-like class frequencies."""
    rng = np.random.default_rng(seed)
    y_true = rng.choice(len(CLASS_NAMES), n, p=[0.04, 0.05, 0.11, 0.02, 0.11, 0.65, 0.02])
    logits = rng.normal(size=(n, len(CLASS_NAMES)))
    logits[np.arange(n), y_true] += 2.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, probabilities


def test_bootstrap_with_every_image_once_reproduces_the_point_estimates():
    y_true, probabilities = random_predictions()
    once = np.ones((1, len(y_true)))
    y_pred = probabilities.argmax(axis=1)
    assert mean_of_ratios(*weighted_hits(y_true, y_pred, once))[0] == pytest.approx(
        balanced_accuracy_score(y_true, y_pred)
    )
    assert mean_of_ratios(*weighted_auc_parts(y_true, probabilities, once))[0] == pytest.approx(
        roc_auc_score(y_true, probabilities, multi_class="ovr")
    )


def test_bootstrap_counts_resample_every_image_set_to_full_size():
    weights = bootstrap_weights(50, draws=20, seed=0)
    assert weights.shape == (20, 50)
    assert np.all(weights.sum(axis=1) == 50)
    assert np.all(weights == np.round(weights))


def test_bootstrap_intervals_contain_the_estimate_and_follow_the_seed():
    y_true, probabilities = random_predictions()
    first = compute_metrics(y_true, probabilities, bootstrap_draws=300, seed=0)
    again = compute_metrics(y_true, probabilities, bootstrap_draws=300, seed=0)
    other = compute_metrics(y_true, probabilities, bootstrap_draws=300, seed=1)
    for name, interval in first["intervals"].items():
        assert interval["low"] < first[name] < interval["high"], name
        assert (interval["level"], interval["draws"], interval["seed"]) == (0.95, 300, 0)
        assert again["intervals"][name] == interval
        assert (other["intervals"][name]["low"], other["intervals"][name]["high"]) != (
            interval["low"],
            interval["high"],
        )


@pytest.mark.parametrize(
    ("y_true", "probabilities", "message"),
    [
        (np.zeros(3, dtype=int), np.full((3, 5), 0.2), "shape"),
        (np.zeros(2, dtype=int), np.full((3, 7), 1 / 7), "one true label per row"),
        (np.array([0, 7]), np.full((2, 7), 1 / 7), "class indices"),
    ],
)
def test_malformed_inputs_are_refused(y_true, probabilities, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(y_true, probabilities, bootstrap_draws=10)


def test_catalogue_names_every_metric_once_and_the_intervals_compute_metrics_gives(hand_metrics):
    from evaluation.catalogue import INTERVAL_METRICS, METRICS, REPORT, metrics_shown

    keys = [metric.key for metric in METRICS]
    assert len(set(keys)) == len(keys)
    assert set(keys) <= set(hand_metrics)
    assert set(hand_metrics["intervals"]) == set(INTERVAL_METRICS)
    labels = {metric.key: metric.label for metric in metrics_shown(REPORT)}
    assert labels["balanced_accuracy"] == "Balanced accuracy (mean recall over classes)"
    assert labels["expected_calibration_error"] == "Expected calibration error (15 bins; lower is better)"
