"""Balanced accuracy as a streaming Keras metric, so `fit` reports it every epoch.

Plain accuracy rewards a model for saying "nv" (two-thirds of HAM10000); balanced accuracy, the
mean recall over classes, is what the ISIC challenge ranks by and what selects the kept epoch.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="training")
class BalancedAccuracy(keras.metrics.Metric):
    """Mean per-class recall, over the classes present in the labels seen so far.

    Accumulates a confusion matrix across batches, so the value is exact for the whole epoch,
    not an average of per-batch values. Sample weights are ignored: weighting a class's samples
    does not change its recall.
    """

    def __init__(self, num_classes, name="balanced_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.confusion = self.add_variable(shape=(num_classes, num_classes), initializer="zeros", name="confusion")

    def update_state(self, y_true, y_pred, sample_weight=None):
        true = ops.one_hot(ops.argmax(y_true, axis=-1), self.num_classes, dtype=self.dtype)
        predicted = ops.one_hot(ops.argmax(y_pred, axis=-1), self.num_classes, dtype=self.dtype)
        self.confusion.assign_add(ops.matmul(ops.transpose(true), predicted))

    def result(self):
        support = ops.sum(self.confusion, axis=1)
        recall = ops.divide_no_nan(ops.diagonal(self.confusion), support)
        present = ops.cast(support > 0, self.dtype)
        return ops.divide_no_nan(ops.sum(recall * present), ops.sum(present))

    def reset_state(self):
        # Not `zeros_like(self.confusion)`: JAX cannot read a Keras variable's dtype that way.
        self.confusion.assign(ops.zeros(self.confusion.shape, dtype=self.confusion.dtype))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
