"""benchmarks/batch_norm_statistics.py: re-estimating batch-norm statistics leaves the weights alone."""

import keras
import numpy as np
import pytest

from benchmarks.batch_norm_statistics import batch_norm_layers, reestimate_batch_norm


@pytest.mark.backend
def test_reestimated_statistics_are_the_equal_weight_mean_over_the_batches_and_nothing_else_changes():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(momentum=0.9)], name="inner")
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2)(inner(keras.layers.BatchNormalization(momentum=0.9)(inputs)))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    batches = [(rng.normal(loc, scale, (16, 3)).astype("float32"), None) for loc, scale in ((0, 1), (5, 2), (-3, 0.5))]
    first, nested = batch_norm_layers(model)
    assert nested is inner.layers[0]
    weights = [variable.numpy().copy() for variable in model.trainable_weights]

    assert reestimate_batch_norm(model, batches, batches=3) == 2

    images = np.stack([x for x, _ in batches])
    np.testing.assert_allclose(first.moving_mean.numpy(), images.mean(axis=1).mean(axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(first.moving_variance.numpy(), images.var(axis=1).mean(axis=0), rtol=1e-3)
    for before, after in zip(weights, model.trainable_weights):
        np.testing.assert_array_equal(before, after.numpy())
    assert first.momentum == nested.momentum == 0.9
