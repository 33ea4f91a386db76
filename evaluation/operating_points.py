"""Clinical operating points: a threshold on P(melanoma) or P(malignant) chosen on validation for a
target sensitivity, and the test sensitivity and specificity it gives.

    from evaluation.operating_points import operating_points
    operating_points(val_y, val_probabilities, test_y, test_probabilities)

A screen runs at a fixed high sensitivity, not at the arg-max: an image is called positive where its
score reaches the threshold. The threshold is the highest that still finds the target share of the
validation positives; the test images then say what that threshold does on images it was not chosen on.
"""

import math

import numpy as np

from dataset.metadata import CLASS_NAMES
from evaluation.metrics import BOOTSTRAP_DRAWS, bootstrap_interval, bootstrap_weights

# The positive classes of each screen: melanoma alone, and the malignant diagnoses.
SCREENS = {"melanoma": ("mel",), "malignant": ("mel", "bcc", "akiec")}
TARGET_SENSITIVITIES = (0.90, 0.95)


def screen_scores(probabilities, classes):
    """An image's score for a screen: the summed probability of its positive classes."""
    return np.asarray(probabilities)[:, [CLASS_NAMES.index(name) for name in classes]].sum(axis=1)


def threshold_for_sensitivity(scores, positive, target):
    """The highest threshold t at which `score >= t` finds at least `target` of the positives.

    With n positives it must find k = ceil(target * n) of them: t is the k-th highest positive
    score (ties above it are found too, so the sensitivity can exceed the target). None without positives.
    """
    positive_scores = np.sort(np.asarray(scores)[np.asarray(positive, dtype=bool)])[::-1]
    if len(positive_scores) == 0:
        return None
    # The tolerance keeps 0.9 * 10 at 9, not the 9.000000000000002 floating point makes of it.
    needed = max(1, math.ceil(target * len(positive_scores) - 1e-9))
    return float(positive_scores[needed - 1])


def sensitivity_specificity(scores, positive, threshold, weights=None):
    """Sensitivity and specificity of `score >= threshold`; with `weights` (draws, n), per draw (NaN where undefined)."""
    called = np.asarray(scores) >= threshold
    positive = np.asarray(positive, dtype=bool)
    weights = np.ones((1, len(called))) if weights is None else weights
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = (weights @ (called & positive)) / (weights @ positive)
        specificity = (weights @ (~called & ~positive)) / (weights @ ~positive)
    return sensitivity, specificity


def operating_points(val_y, val_probabilities, test_y, test_probabilities, *, bootstrap_draws=BOOTSTRAP_DRAWS, seed=0):
    """For each screen and target sensitivity: the validation threshold, and the test sensitivity and
    specificity at it with bootstrap intervals over the test images.

    Returns:
        {screen: {"classes", "points": [{"target", "threshold", "val_sensitivity", "val_specificity",
        "sensitivity", "specificity", "intervals": {"sensitivity", "specificity"}}]}}; a screen
        without validation positives has no points.
    """
    weights = bootstrap_weights(len(test_y), bootstrap_draws, seed) if bootstrap_draws else None
    result = {}
    for screen, classes in SCREENS.items():
        indices = [CLASS_NAMES.index(name) for name in classes]
        val_positive, test_positive = np.isin(val_y, indices), np.isin(test_y, indices)
        val_scores, test_scores = screen_scores(val_probabilities, classes), screen_scores(test_probabilities, classes)
        points = []
        for target in TARGET_SENSITIVITIES:
            threshold = threshold_for_sensitivity(val_scores, val_positive, target)
            if threshold is None:
                continue
            val_rates = sensitivity_specificity(val_scores, val_positive, threshold)
            test_rates = sensitivity_specificity(test_scores, test_positive, threshold)
            point = {
                "target": target,
                "threshold": threshold,
                **{f"val_{name}": defined(rate[0]) for name, rate in zip(("sensitivity", "specificity"), val_rates)},
                **{name: defined(rate[0]) for name, rate in zip(("sensitivity", "specificity"), test_rates)},
            }
            if weights is not None:
                draws = sensitivity_specificity(test_scores, test_positive, threshold, weights)
                point["intervals"] = {
                    name: bootstrap_interval(values, seed=seed)
                    for name, values in zip(("sensitivity", "specificity"), draws)
                }
            points.append(point)
        result[screen] = {"classes": list(classes), "points": points}
    return result


def defined(value):
    return None if np.isnan(value) else float(value)
