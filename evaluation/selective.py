"""Does the model know when it does not know? Selective prediction and split-conformal prediction sets.

    from evaluation.selective import risk_coverage, conformal_thresholds, prediction_sets
    coverage, risk, aurc = risk_coverage(test_y, test_probabilities)
    thresholds = conformal_thresholds(val_y, val_probabilities)       # calibrated on validation
    sets = prediction_sets(test_probabilities, thresholds["0.90"]["marginal"])

Selective prediction answers only for the images the model is most sure of (its top probability)
and refers the rest: the risk-coverage curve is the error among the answered images against the
share answered, and its area (AURC, Geifman & El-Yaniv, 2017) is lower for a model that knows its
errors. A split-conformal prediction set (Angelopoulos & Bates, 2021, "A Gentle Introduction to
Conformal Prediction") holds every class whose probability is at least 1 - q, with q calibrated on
the validation images so that the set holds the true class at least 1 - alpha of the time on new
images exchangeable with them: marginally (one q) or per true class (one q per class, so that each
diagnosis, melanoma included, is covered at the level, not only the common ones).
"""

import math

import numpy as np

from dataset.metadata import CLASS_NAMES

COVERAGE_LEVELS = (0.90, 0.95)


def risk_coverage(y_true, probabilities):
    """The risk-coverage curve from the top probability, and its area.

    Returns:
        (coverage, risk, aurc): coverage k/n and the error rate among the k most confident images,
        for k = 1..n; the AURC is the mean risk over the n coverages.
    """
    probabilities = np.asarray(probabilities)
    confidence = probabilities.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    errors = (probabilities.argmax(axis=1) != np.asarray(y_true))[order]
    answered = np.arange(1, len(order) + 1)
    risk = np.cumsum(errors) / answered
    return answered / len(order), risk, float(risk.mean())


def conformal_quantile(scores, alpha):
    """The ceil((n + 1)(1 - alpha)) / n empirical quantile of the calibration scores (the (k)-th smallest);
    1 (every class in every set) where the n scores are too few for the level."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    rank = math.ceil((len(scores) + 1) * (1 - alpha) - 1e-9)
    return float(scores[rank - 1]) if 0 < rank <= len(scores) else 1.0


def conformal_thresholds(y_true, probabilities, levels=COVERAGE_LEVELS):
    """The conformal q of each level, marginal and per class, from labelled calibration images.

    The score of an image is 1 - p(true class). A class with no calibration images gets q = 1.

    Returns:
        {"0.90": {"marginal": q, "class_conditional": {class: q}}, ...}
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    scores = 1 - np.asarray(probabilities)[np.arange(len(y_true)), y_true]
    return {
        f"{level:.2f}": {
            "marginal": conformal_quantile(scores, 1 - level),
            "class_conditional": {
                name: conformal_quantile(scores[y_true == index], 1 - level) for index, name in enumerate(CLASS_NAMES)
            },
        }
        for level in levels
    }


def prediction_sets(probabilities, threshold):
    """(n, 7) booleans: class k is in an image's set where 1 - p_k <= q; `threshold` is q, or {class: q}."""
    if isinstance(threshold, dict):
        threshold = np.array([threshold[name] for name in CLASS_NAMES])
    return 1 - np.asarray(probabilities) <= threshold


def set_evaluation(y_true, sets):
    """The empirical coverage and mean set size, overall and per true class (None where it has no images)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    covered = sets[np.arange(len(y_true)), y_true]
    sizes = sets.sum(axis=1)

    def summary(mask):
        if not mask.any():
            return {"coverage": None, "mean_size": None, "n_images": 0}
        return {
            "coverage": float(covered[mask].mean()),
            "mean_size": float(sizes[mask].mean()),
            "n_images": int(mask.sum()),
        }

    return {
        **summary(np.ones(len(y_true), dtype=bool)),
        "empty_share": float((sizes == 0).mean()),
        "per_class": {name: summary(y_true == index) for index, name in enumerate(CLASS_NAMES)},
    }


def conformal_evaluation(thresholds, y_true, probabilities):
    """Each level's and kind's sets on the test images: `set_evaluation` beside its q."""
    return {
        level: {
            kind: {"threshold": q, **set_evaluation(y_true, prediction_sets(probabilities, q))}
            for kind, q in by_kind.items()
        }
        for level, by_kind in thresholds.items()
    }
