"""VGG16 (Simonyan & Zisserman, 2015) from `keras.applications`, for transfer learning.

With ImageNet weights the backbone is fine-tuned in two stages (see `freeze_backbone` and
`unfreeze_top_blocks`): first only the new head learns, then the last convolutional block(s)
join it at a lower learning rate, so the head's large early gradients do not wreck the
pretrained filters. From scratch (`weights=None`) it trains in one stage, like the others, with
He initialisation and standardised inputs (see `_he_initialise`).
"""

from dataclasses import dataclass

import keras
from keras import layers, ops

from networks.applications import application_backbone
from networks.registry import register_backbone

# The ImageNet VGG16 weights expect Caffe-style input: BGR channels minus these channel means.
IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)
# ImageNet's per-channel pixel standard deviations (BGR), for training from scratch.
IMAGENET_BGR_STDS = (57.375, 57.12, 58.395)


@dataclass(frozen=True)
class VGG16Options:
    """VGG16 has a fixed architecture; its weights are passed to `create_model` separately."""


@keras.saving.register_keras_serializable(package="networks")
class VGGPreprocessing(layers.Layer):
    """RGB images in [0, 255] to the BGR, mean-subtracted input of the ImageNet VGG16 weights.

    Args:
        standardize: also divide by the pixel standard deviation, for a network trained from
            scratch: a plain 13-layer ReLU stack without batch norm learns only from inputs of
            about unit scale.
    """

    def __init__(self, standardize=False, **kwargs):
        super().__init__(**kwargs)
        self.standardize = standardize

    def call(self, images):
        centred = ops.flip(images, axis=-1) - ops.convert_to_tensor(IMAGENET_BGR_MEANS, dtype=images.dtype)
        if self.standardize:
            return centred / ops.convert_to_tensor(IMAGENET_BGR_STDS, dtype=images.dtype)
        return centred

    def get_config(self):
        return {**super().get_config(), "standardize": self.standardize}


@register_backbone(
    "vgg16",
    options=VGG16Options,
    description="VGG16 from keras.applications; ImageNet, local or no weights",
    pretrained=True,
    # Already small enough at 32 px for the network tests, which train it from scratch.
    toy_options={},
    parameters=14_847_815,
)
def vgg16_backbone(image_size, options, weights):
    """The 13 convolutional layers of VGG16 (blocks 1 to 5), behind their input preprocessing.

    Args:
        image_size: side of the input images (at least 32).
        options: `VGG16Options` (none: the architecture is fixed).
        weights: None (random initialisation), "imagenet" (downloaded by Keras on first use and
            cached in ~/.keras/models), or the path of a weights file for VGG16 without its top
            (`vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`, or a `.weights.h5` file saved
            from this backbone).

    Raises:
        UserError: the weights file does not exist or does not fit, or "imagenet" was asked for
            and the download failed (offline); the message says how to go on.
    """
    preprocessing = VGGPreprocessing(standardize=weights is None, name="vgg_preprocessing")
    vgg = application_backbone(keras.applications.VGG16, image_size, weights, preprocessing, "VGG16")
    if weights is None:
        _he_initialise(vgg)
    return vgg


def _he_initialise(vgg):
    """Re-draws the convolution kernels with He initialisation (He et al., 2015).

    keras.applications draws them Glorot-uniform, which halves the signal's variance at every
    ReLU layer: through VGG16's 13 convolutions it all but vanishes, and the network, which has
    no batch norm to undo that, barely learns from scratch.
    """
    initializer = keras.initializers.HeNormal()
    for layer in vgg.layers:
        if isinstance(layer, layers.Conv2D):
            layer.kernel.assign(initializer(layer.kernel.shape))
