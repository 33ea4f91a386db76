"""A plain deep CNN: the baseline every other architecture has to beat."""

from dataclasses import dataclass

import keras
from keras import layers

from networks.options import check_positive, check_types
from networks.registry import register_backbone


@dataclass(frozen=True)
class CNNOptions:
    """Options of the vanilla CNN.

    Attributes:
        filters: the width of each block; each block halves the resolution, so the number of
            blocks sets the overall stride (five blocks: 32).
        convs_per_block: 3x3 convolutions per block.
        batch_norm_momentum: momentum of the batch-norm moving statistics used at inference.
    """

    filters: tuple = (40, 80, 160, 320, 512)
    convs_per_block: int = 2
    batch_norm_momentum: float = 0.9

    def __post_init__(self):
        check_types(self, "CNN")
        check_positive(self, "CNN", "filters", "convs_per_block")


@register_backbone("cnn", options=CNNOptions, description="plain deep CNN (conv-BN-ReLU blocks), trained from scratch")
def cnn_backbone(image_size, options):
    """Blocks of (3x3 conv, batch norm, ReLU) x n followed by 2x2 max pooling.

    Fully convolutional: with the head's global max pooling the model looks for lesion features
    wherever they are in the frame, and it takes any input size of at least 2 ** len(filters).
    """
    image = keras.Input((image_size, image_size, 3))
    x = layers.Rescaling(1 / 255, name="rescale")(image)
    for block, filters in enumerate(options.filters, start=1):
        for conv in range(1, options.convs_per_block + 1):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(momentum=options.batch_norm_momentum, name=f"block{block}_bn{conv}")(x)
            x = layers.ReLU(name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(image, x, name="backbone")
