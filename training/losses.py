"""The three training losses: weighted cross-entropy, focal, and cost-sensitive.

All take one-hot labels and softmax probabilities.
"""

import keras
import numpy as np
from keras import ops

from dataset import CLASS_NAMES

# A melanoma called one of these is the mistake that costs a patient most.
BENIGN_CLASSES = ("bkl", "df", "nv", "vasc")


def melanoma_cost_matrix(melanoma_cost):
    """Cost of predicting column j for true class i: 0 when right, 1 for most mistakes, and
    `melanoma_cost` for a melanoma predicted as a benign class."""
    costs = 1.0 - np.eye(len(CLASS_NAMES))
    melanoma = CLASS_NAMES.index("mel")
    for name in BENIGN_CLASSES:
        costs[melanoma, CLASS_NAMES.index(name)] = melanoma_cost
    return costs


@keras.saving.register_keras_serializable(package="training")
class CostSensitiveCrossentropy(keras.losses.Loss):
    """Cross-entropy plus the expected cost of the prediction under a cost matrix.

        loss = -log p[true] + sum_j cost[true, j] * p[j]

    The second term is the cost a decision drawn from the predicted distribution would incur;
    it pulls probability mass away from the costly mistakes (a melanoma called benign) more
    than from the cheap ones, while the cross-entropy keeps the probabilities calibrated.

    Args:
        cost_matrix: (classes, classes) costs, rows true, columns predicted; zero diagonal.
    """

    def __init__(self, cost_matrix, name="cost_sensitive_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.cost_matrix = np.asarray(cost_matrix, dtype="float32")

    def call(self, y_true, y_pred):
        y_pred = ops.clip(y_pred, keras.config.epsilon(), 1.0 - keras.config.epsilon())
        crossentropy = -ops.sum(y_true * ops.log(y_pred), axis=-1)
        row_costs = ops.matmul(y_true, ops.convert_to_tensor(self.cost_matrix, dtype=y_pred.dtype))
        return crossentropy + ops.sum(row_costs * y_pred, axis=-1)

    def get_config(self):
        return {**super().get_config(), "cost_matrix": self.cost_matrix.tolist()}


def weighs_samples(name):
    """Whether `fit` should weigh the samples by class for the loss `name`.

    The focal loss takes the class weights as its per-class alpha, so `fit` must not weigh the
    samples a second time.
    """
    return name != "focal"


def make_loss(name, class_weights, *, focal_gamma=2.0, melanoma_cost=5.0, label_smoothing=0.0):
    """Builds a loss by name (whether `fit` also weighs the samples is `weighs_samples(name)`).

    Args:
        name: "crossentropy", "focal" or "cost".
        class_weights: {class index: weight}.
        focal_gamma: the focusing exponent of the focal loss.
        melanoma_cost: the cost-sensitive loss's cost of a melanoma called benign.
        label_smoothing: mixes the one-hot targets with the uniform distribution (crossentropy
            and focal): the model is not pushed to infinitely confident logits.

    """
    if name == "crossentropy":
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    if name == "focal":
        alpha = [class_weights[index] for index in range(len(CLASS_NAMES))]
        return keras.losses.CategoricalFocalCrossentropy(
            alpha=alpha, gamma=focal_gamma, label_smoothing=label_smoothing
        )
    if name == "cost":
        return CostSensitiveCrossentropy(melanoma_cost_matrix(melanoma_cost))
    raise ValueError(f"unknown loss {name!r} (expected crossentropy, focal or cost)")
