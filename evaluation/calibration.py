"""Are the probabilities right? Temperature scaling fitted on validation, and the scores that say how well.

    from evaluation.calibration import fit_temperature, apply_temperature, calibration_scores
    temperature = fit_temperature(val_y, val_probabilities)      # never on the test images
    calibrated = apply_temperature(test_probabilities, temperature)
    calibration_scores(test_y, test_probabilities)              # ECE (fixed and adaptive), Brier, NLL

Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks") divides the
logits by one number T before the softmax: T > 1 softens over-confident probabilities, T < 1
sharpens under-confident ones, and the arg-max, hence every accuracy figure, is unchanged. The
models end in a softmax, so their logits are the log-probabilities up to a constant per image,
which the softmax cancels: T is fitted and applied on log(p) without the logits themselves.
"""

import numpy as np
from scipy.optimize import minimize_scalar

from evaluation.metrics import CALIBRATION_BINS, expected_calibration_error

# log(0) is -inf: a probability that underflowed to 0 in float32 is taken as this instead.
SMALLEST_PROBABILITY = 1e-12
# The search range of T; far wider than any network needs (the preset runs: about 1 to 2).
TEMPERATURE_RANGE = (0.05, 20.0)


def log_probabilities(probabilities):
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), SMALLEST_PROBABILITY, 1.0))


def apply_temperature(probabilities, temperature):
    """softmax(log(p) / T) of each row: the probabilities with their logits divided by T."""
    scaled = log_probabilities(probabilities) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exponentials = np.exp(scaled)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def negative_log_likelihood(y_true, probabilities):
    """Mean -log p(true class) over the images (the cross-entropy loss)."""
    return float(-log_probabilities(probabilities)[np.arange(len(y_true)), y_true].mean())


def fit_temperature(y_true, probabilities):
    """The T that minimises the negative log-likelihood of the labelled images (validation, never test).

    A one-dimensional bounded search over log T, so T stays positive and the search is as fine
    for T = 0.5 as for T = 2.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    logits = log_probabilities(probabilities)
    rows = np.arange(len(y_true))

    def loss(log_temperature):
        scaled = logits / np.exp(log_temperature)
        scaled -= scaled.max(axis=1, keepdims=True)
        return float((np.log(np.exp(scaled).sum(axis=1)) - scaled[rows, y_true]).mean())

    low, high = np.log(TEMPERATURE_RANGE)
    result = minimize_scalar(loss, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def brier_score(y_true, probabilities):
    """Mean over images of the squared distance between the probabilities and the one-hot truth (0 best, 2 worst)."""
    one_hot = np.eye(probabilities.shape[1])[y_true]
    return float(((probabilities - one_hot) ** 2).sum(axis=1).mean())


def adaptive_calibration_error(y_true, probabilities, bins=CALIBRATION_BINS):
    """Top-label ECE over equal-mass bins: the images sorted by confidence and cut into `bins` groups
    of (nearly) equal size (Nixon et al., 2019), so no bin is nearly empty where confidence crowds near 1."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    order = np.argsort(confidence, kind="stable")
    gaps = [abs((correct[part] - confidence[part]).sum()) for part in np.array_split(order, min(bins, len(order)))]
    return float(np.sum(gaps) / len(y_true))


def calibration_scores(y_true, probabilities):
    """{ece_fixed, ece_adaptive, brier, nll} of one set of probabilities."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return {
        "ece_fixed": expected_calibration_error(y_true, probabilities),
        "ece_adaptive": adaptive_calibration_error(y_true, probabilities),
        "brier": brier_score(y_true, probabilities),
        "nll": negative_log_likelihood(y_true, probabilities),
    }


def reliability_bins(y_true, probabilities, bins=CALIBRATION_BINS):
    """Per equal-width confidence bin: its mean confidence, accuracy and image count (the reliability diagram)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "edges": np.linspace(0, 1, bins + 1).tolist(),
            "confidence": (np.bincount(index, weights=confidence, minlength=bins) / counts).tolist(),
            "accuracy": (np.bincount(index, weights=correct, minlength=bins) / counts).tolist(),
            "count": counts.tolist(),
        }
