"""Test-set metrics of a classifier: per class, overall, calibration, and bootstrap intervals.

Every function takes the true class indices (positions in `CLASS_NAMES`) and an (n, 7) matrix
of predicted probabilities; the predicted class is the most probable one.

Two conventions keep every number defined on any test set, however small:
- Macro averages (balanced accuracy, macro F1, macro AUC) are over the classes present in the
  test labels. A class with no test images has no recall or AUC to average; the images wrongly
  given its label still count, as misses of their true classes. HAM10000's own test subset holds
  all seven classes, so there this is the plain mean over the seven.
- A class that is never predicted has precision 0 (scikit-learn's `zero_division=0`), not NaN.
"""

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

from dataset.metadata import CLASS_NAMES

NUM_CLASSES = len(CLASS_NAMES)
MELANOMA = CLASS_NAMES.index("mel")
CALIBRATION_BINS = 15
INTERVAL_LEVEL = 0.95
# Resamples of the test images behind each interval.
BOOTSTRAP_DRAWS = 1000


def compute_metrics(y_true, probabilities, *, bootstrap_draws=BOOTSTRAP_DRAWS, seed=0):
    """Every metric of `metrics.json`, with 95% bootstrap intervals for the headline ones.

    Args:
        y_true: (n,) true class indices.
        probabilities: (n, 7) predicted probabilities, columns in `CLASS_NAMES` order.
        bootstrap_draws: resamples of the test images for the intervals.
        seed: fixes the resamples; the same seed and data always give the same intervals.

    Returns:
        A JSON-ready dict: `accuracy`, `balanced_accuracy` (mean recall over the classes present,
        the ISIC 2018 challenge metric), `macro_f1`, `macro_auc` (one-vs-rest), melanoma
        sensitivity and specificity (melanoma against the rest), `expected_calibration_error`,
        `class_names`, `confusion_matrix` (rows true, columns predicted), `per_class`
        (precision, recall, F1, one-vs-rest AUC and support), `intervals` and `n_images`.
        A metric that is undefined on this test set (melanoma sensitivity without melanomas)
        is None.
    """
    y_true, probabilities = check_inputs(y_true, probabilities)
    y_pred = probabilities.argmax(axis=1)
    classes = np.arange(NUM_CLASSES)
    present = np.isin(classes, y_true)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    matrix = confusion_matrix(y_true, y_pred, labels=classes)
    class_auc = per_class_auc(y_true, probabilities)
    defined_auc = [value for value in class_auc if value is not None]

    draws = interval_draws(y_true, probabilities, bootstrap_draws=bootstrap_draws, seed=seed)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # scikit-learn's `balanced_accuracy_score` is this mean, but warns when a class is
        # predicted that has no test images.
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "macro_auc": float(np.mean(defined_auc)) if defined_auc else None,
        "melanoma_sensitivity": float(recall[MELANOMA]) if present[MELANOMA] else None,
        "melanoma_specificity": melanoma_specificity(matrix),
        "expected_calibration_error": expected_calibration_error(y_true, probabilities),
        "class_names": list(CLASS_NAMES),
        "confusion_matrix": matrix.tolist(),
        "per_class": {
            name: {
                "precision": float(precision[index]),
                "recall": float(recall[index]),
                "f1": float(f1[index]),
                "auc": class_auc[index],
                "support": int(support[index]),
            }
            for index, name in enumerate(CLASS_NAMES)
        },
        "intervals": {name: bootstrap_interval(values, seed=seed) for name, values in draws.items()},
        "n_images": len(y_true),
    }


def interval_draws(y_true, probabilities, *, bootstrap_draws, seed):
    """Each metric with a bootstrap interval (`catalogue.INTERVAL_METRICS`) on every resample of the images: {name: (draws,) array}."""
    weights = bootstrap_weights(len(y_true), bootstrap_draws, seed)
    hits, totals = weighted_hits(y_true, probabilities.argmax(axis=1), weights)
    return {
        "balanced_accuracy": mean_of_ratios(hits, totals),
        "macro_auc": mean_of_ratios(*weighted_auc_parts(y_true, probabilities, weights)),
        "melanoma_sensitivity": mean_of_ratios(hits[:, [MELANOMA]], totals[:, [MELANOMA]]),
    }


def check_inputs(y_true, probabilities):
    """Returns the labels as int64 and the probabilities as float64, or raises ValueError."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != NUM_CLASSES:
        raise ValueError(f"probabilities must have shape (images, {NUM_CLASSES}); got {probabilities.shape}")
    if y_true.shape != (len(probabilities),) or len(y_true) == 0:
        raise ValueError(
            f"need one true label per row of probabilities, and at least one; "
            f"got {y_true.size} labels for {len(probabilities)} rows"
        )
    if y_true.min() < 0 or y_true.max() >= NUM_CLASSES:
        raise ValueError(
            f"true labels must be class indices 0 to {NUM_CLASSES - 1}; got {y_true.min()} to {y_true.max()}"
        )
    return y_true, probabilities


def per_class_auc(y_true, probabilities):
    """One-vs-rest ROC AUC of each class; None for a class with no positive or no negative image."""
    aucs = []
    for index in range(NUM_CLASSES):
        positive = y_true == index
        defined = 0 < positive.sum() < len(y_true)
        aucs.append(float(roc_auc_score(positive, probabilities[:, index])) if defined else None)
    return aucs


def melanoma_specificity(matrix):
    """Share of the non-melanoma images not called melanoma; None if every image is a melanoma."""
    matrix = np.asarray(matrix)
    negatives = matrix.sum() - matrix[MELANOMA].sum()
    false_alarms = matrix[:, MELANOMA].sum() - matrix[MELANOMA, MELANOMA]
    return float(1 - false_alarms / negatives) if negatives else None


def expected_calibration_error(y_true, probabilities, bins=CALIBRATION_BINS):
    """Top-label expected calibration error (Guo et al., 2017, "On Calibration of Modern Neural Networks").

    Images are grouped by their confidence (the top probability) into `bins` equal-width bins,
    (0, 1/15], (1/15, 2/15], ..., (14/15, 1]; the ECE is the mean over bins, weighted by their
    share of images, of |accuracy - mean confidence|. 0 means confidence matches accuracy.
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    bin_index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    # A bin's share times its gap, |B|/n * |acc(B) - conf(B)|, is |sum(correct - confidence)| / n
    # over its images, so empty bins need no special case.
    gaps = np.bincount(bin_index, weights=correct - confidence, minlength=bins)
    return float(np.abs(gaps).sum() / len(y_true))


# === Bootstrap ===
# A resample of the n test images with replacement is represented by how often it draws each
# image: a (draws, n) matrix of counts. A metric of a resample is then the metric with images
# weighted by their counts, computed for all draws at once with array operations.


def bootstrap_weights(n, draws, seed):
    """(draws, n) counts: how often each of n images is drawn in each resample of size n."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1 / n), size=draws).astype(np.float64)


def weighted_hits(y_true, y_pred, weights):
    """Per draw and class: weighted correct predictions and weighted images, each (draws, 7)."""
    one_hot = np.eye(NUM_CLASSES)[y_true]
    return (weights * (y_pred == y_true)) @ one_hot, weights @ one_hot


def weighted_auc_parts(y_true, probabilities, weights):
    """Per draw and class, the one-vs-rest AUC as numerator and denominator, each (draws, 7).

    The AUC is the Mann-Whitney statistic: over (positive, negative) pairs, the share where the
    positive scores higher, a tie counting half. The denominator (positives x negatives, weighted)
    is 0 where the AUC is undefined.
    """
    numerators, denominators = [], []
    for index in range(NUM_CLASSES):
        order = np.argsort(probabilities[:, index], kind="stable")
        scores = probabilities[order, index]
        positive = y_true[order] == index
        # Images with equal scores form one group, so that ties are found once, not per draw.
        starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])
        sorted_weights = weights[:, order]
        positives = np.add.reduceat(sorted_weights * positive, starts, axis=1)
        negatives = np.add.reduceat(sorted_weights * ~positive, starts, axis=1)
        negatives_below = np.cumsum(negatives, axis=1) - negatives
        numerators.append((positives * (negatives_below + negatives / 2)).sum(axis=1))
        denominators.append(positives.sum(axis=1) * negatives.sum(axis=1))
    return np.column_stack(numerators), np.column_stack(denominators)


def mean_of_ratios(numerators, denominators):
    """Per row, the mean of numerator / denominator over the columns with a positive denominator.

    With per-class hits and totals this is the balanced accuracy of each draw, over the classes
    the draw contains; a row with no such column gives NaN.
    """
    defined = denominators > 0
    ratios = np.divide(numerators, denominators, out=np.zeros(numerators.shape), where=defined)
    counts = defined.sum(axis=1)
    return np.divide(ratios.sum(axis=1), counts, out=np.full(len(counts), np.nan), where=counts > 0)


def bootstrap_interval(values, *, seed, level=INTERVAL_LEVEL):
    """The percentile interval of a metric's bootstrap draws, as stored in `metrics.json`.

    Args:
        values: the metric in each draw; NaN where it is undefined (left out).
        seed: the seed the draws came from, recorded so that the interval can be reproduced.
        level: the interval's coverage.

    Returns:
        `{low, high, level, draws, seed}`, with `draws` the number of defined draws; None if
        there are none.
    """
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return None
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return {"low": float(low), "high": float(high), "level": level, "draws": len(values), "seed": seed}
