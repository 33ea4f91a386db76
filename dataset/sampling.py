"""Class balancing for the training subset: resampling row indices, and class weights.

HAM10000 is two-thirds nevi (nv 6,705 of 10,015 images; df has 115). Trained on it as it is, a
network learns to say "nv"; the cure is to show it the classes more evenly, weigh its mistakes
by class, or both. Only the training subset is ever resampled; validation and test images are
seen exactly as they are.
"""

from dataclasses import dataclass

import numpy as np
from imblearn.over_sampling import RandomOverSampler
from imblearn.under_sampling import RandomUnderSampler
from sklearn.utils.class_weight import compute_class_weight

from dataset.metadata import CLASS_NAMES

BALANCE_MODES = ("none", "down", "up", "combined")


@dataclass(frozen=True)
class Balance:
    """How the training subset is resampled each epoch.

    Modes:
        none: every training image once.
        down: every class down-sampled to the smallest class's count.
        up: every class up-sampled to the largest class's count.
        combined: the design this project was built around. Classes above `target` are
            down-sampled to it (in HAM10000, nv alone, and a fresh draw of nevi each epoch
            means all of them are seen over a run); classes below are up-sampled towards it,
            but to at most `max_oversampling` times their own count, so that 80 dermatofibromas
            are not repeated twelve times an epoch.
    """

    mode: str = "none"
    target: int = 1000
    max_oversampling: float = 4.0

    def __post_init__(self):
        if self.mode not in BALANCE_MODES:
            raise ValueError(f"unknown balance {self.mode!r} (expected one of {', '.join(BALANCE_MODES)})")
        if self.target < 1:
            raise ValueError(f"balance target must be a positive number of images per class; got {self.target}")
        if self.max_oversampling < 1:
            raise ValueError(f"max_oversampling must be at least 1; got {self.max_oversampling}")

    def class_counts(self, labels):
        """The number of rows of each present class that one resampled epoch holds."""
        present, counts = np.unique(labels, return_counts=True)
        if self.mode == "none":
            wanted = counts
        elif self.mode == "down":
            wanted = np.full_like(counts, counts.min())
        elif self.mode == "up":
            wanted = np.full_like(counts, counts.max())
        else:
            raised = np.minimum(self.target, np.floor(counts * self.max_oversampling)).astype(counts.dtype)
            wanted = np.where(counts > self.target, self.target, np.maximum(counts, raised))
        return dict(zip(present.tolist(), wanted.tolist()))

    def resample(self, rows, labels, rng):
        """Draws one epoch's rows.

        Args:
            rows: the candidate row numbers (e.g. the training subset's rows in the image cache).
            labels: their class indices.
            rng: a numpy Generator; the same state gives the same draw.

        Returns:
            The drawn row numbers, grouped by class (shuffle them before batching).
        """
        rows = np.asarray(rows)
        labels = np.asarray(labels)
        if self.mode == "none":
            return rows
        wanted = self.class_counts(labels)
        present = dict(zip(*np.unique(labels, return_counts=True)))
        # imbalanced-learn leaves the classes absent from a strategy as they are.
        shrink = {label: n for label, n in wanted.items() if n < present[label]}
        grow = {label: n for label, n in wanted.items() if n > present[label]}
        column = rows.reshape(-1, 1)
        if shrink:
            sampler = RandomUnderSampler(sampling_strategy=shrink, random_state=_seed(rng))
            column, labels = sampler.fit_resample(column, labels)
        if grow:
            sampler = RandomOverSampler(sampling_strategy=grow, random_state=_seed(rng))
            column, labels = sampler.fit_resample(column, labels)
        return column.ravel()


def class_weights(labels, boost=None, num_classes=len(CLASS_NAMES)):
    """scikit-learn's "balanced" class weights, times an optional factor per class.

    Args:
        labels: class indices of one epoch of training rows (after resampling, so that the
            weights correct only what resampling left uneven).
        boost: optional {class name: factor}, e.g. {"mel": 2.0} to make a missed melanoma cost
            twice as much.
        num_classes: classes absent from `labels` get weight 1.

    Returns:
        A dict {class index: weight}, as `keras.Model.fit(class_weight=...)` takes it.
    """
    labels = np.asarray(labels)
    present = np.unique(labels)
    balanced = compute_class_weight("balanced", classes=present, y=labels)
    weights = {index: 1.0 for index in range(num_classes)}
    weights.update({int(label): float(weight) for label, weight in zip(present, balanced)})
    for name, factor in (boost or {}).items():  # its class names are checked with the config (`TrainConfig.validate`)
        weights[CLASS_NAMES.index(name)] *= float(factor)
    return weights


def _seed(rng):
    """imbalanced-learn takes an integer seed; draw it from the epoch's generator."""
    return int(rng.integers(2**31 - 1))
