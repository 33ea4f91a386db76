"""Shades-of-grey colour constancy (Finlayson & Trezzi, 2004), as the model's first layer.

Dermatoscopes and cameras light the skin differently; the ISIC 2018 and 2019 winners removed the
cast of the light from every image before training and testing (Barata et al., 2015, showed the
gain for dermoscopy). Shades of grey estimates the light's colour as the Minkowski p-norm mean of
each channel (p = 1: grey world, p = infinity: white patch; 6 works best on dermoscopy) and
rescales the channels so that the light comes out grey. In the model, it is applied alike in
training, evaluation, prediction and serving.
"""

import keras
from keras import layers, ops

MAX_VALUE = 255.0


@keras.saving.register_keras_serializable(package="networks")
class ShadesOfGrey(layers.Layer):
    """Divides each image's channels by its estimated light colour, keeping the overall brightness.

    Args:
        power: the Minkowski norm's p (at least 1).
    """

    def __init__(self, power=6, **kwargs):
        super().__init__(**kwargs)
        if power < 1:
            raise ValueError(f"shades of grey needs a power of at least 1; got {power}")
        self.power = power

    def call(self, images):
        scaled = ops.cast(images, "float32") / MAX_VALUE
        light = ops.mean(scaled**self.power, axis=(1, 2), keepdims=True) ** (1 / self.power)
        # Gains that turn the light (r, g, b) into a grey of the same length.
        grey = ops.sqrt(ops.sum(light**2, axis=-1, keepdims=True) / 3)
        balanced = ops.clip(scaled * grey / ops.maximum(light, 1e-6), 0.0, 1.0) * MAX_VALUE
        return ops.cast(balanced, images.dtype)

    def get_config(self):
        return {**super().get_config(), "power": self.power}
