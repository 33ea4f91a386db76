"""Adam and AdamW with a lower learning rate for the pretrained backbone than for the new head.

Fine-tuning moves pretrained weights by small steps and a freshly initialised head by large ones
(Keras's transfer-learning guide; ULMFiT's "discriminative fine-tuning"). Keras's optimizers take
one learning rate; these subclasses scale it, in `update_step`, for the variables they are given.
Scaling the gradients instead would do nothing: Adam's step does not depend on their scale.
AdamW's weight decay, which Keras applies at the optimizer's one rate, is scaled alike.
"""

import keras


class _ScaledRates:
    """Mixin: `scaled_variables` (indices into the model's trainable variables, the order the
    optimizer is built with) step at `lr_factor` times the learning rate."""

    def __init__(self, *args, scaled_variables=(), lr_factor=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.scaled_variables = tuple(int(index) for index in scaled_variables)
        self.lr_factor = float(lr_factor)

    def _scaled(self, variable):
        return self._get_variable_index(variable) in self.scaled_variables

    def update_step(self, gradient, variable, learning_rate):
        if self._scaled(variable):
            learning_rate = learning_rate * self.lr_factor
        super().update_step(gradient, variable, learning_rate)

    def _apply_weight_decay(self, variables):
        # AdamW's decoupled decay is lr * weight_decay per step: scaled with the rate too, or the
        # pretrained weights would shrink towards 0 ten times faster than they learn.
        super()._apply_weight_decay([variable for variable in variables if not self._scaled(variable)])
        if self.weight_decay is None:
            return
        for variable in filter(self._scaled, variables):
            if self._use_weight_decay(variable):
                rate = keras.ops.cast(self.learning_rate, variable.dtype) * self.lr_factor
                variable.assign(variable - variable * keras.ops.cast(self.weight_decay, variable.dtype) * rate)

    def get_config(self):
        return {**super().get_config(), "scaled_variables": list(self.scaled_variables), "lr_factor": self.lr_factor}


@keras.saving.register_keras_serializable(package="training")
class ScaledRatesAdam(_ScaledRates, keras.optimizers.Adam):
    """Adam with `lr_factor` times the rate for `scaled_variables`."""


@keras.saving.register_keras_serializable(package="training")
class ScaledRatesAdamW(_ScaledRates, keras.optimizers.AdamW):
    """AdamW with `lr_factor` times the rate for `scaled_variables`."""


def scaled_indices(model, variables):
    """The positions of `variables` among the model's trainable variables."""
    wanted = {id(variable) for variable in variables}
    return [index for index, variable in enumerate(model.trainable_variables) if id(variable) in wanted]
