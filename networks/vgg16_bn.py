"""VGG16 with batch normalisation, trained from scratch, at a chosen width.

The layer layout of VGG16 (Simonyan & Zisserman, 2015: 13 3x3 convolutions in five blocks of
2, 2, 3, 3 and 3, each block ending in 2x2 max pooling) with a batch norm after every convolution,
as in torchvision's `vgg16_bn`. Without ImageNet weights the stock VGG16 (`vgg16`) barely learns:
nothing rescales the signal between its 13 ReLU layers. Batch norm does, so this variant trains
like a modern network from random weights. `width` scales every block's channels, so that it fits
a CPU budget (width 0.25: 16-128 channels, about 0.9 M parameters instead of 14.7 M).
"""

from dataclasses import dataclass

import keras
from keras import layers

from networks.options import check_types
from networks.registry import register_backbone

BLOCK_CONVS = (2, 2, 3, 3, 3)
BLOCK_FILTERS = (64, 128, 256, 512, 512)


@dataclass(frozen=True)
class VGG16BNOptions:
    """Options of VGG16-BN.

    Attributes:
        width: multiplier of every block's channels (1.0: VGG16's 64-512).
        batch_norm_momentum: momentum of the batch-norm moving statistics used at inference.
    """

    width: float = 1.0
    batch_norm_momentum: float = 0.9

    def __post_init__(self):
        check_types(self, "VGG16-BN")
        if not 0 < self.width <= 4:
            raise ValueError(f"VGG16-BN width must be in (0, 4]; got {self.width}")


@register_backbone(
    "vgg16_bn",
    options=VGG16BNOptions,
    description="VGG16 layout with batch norm and a width option, trained from scratch",
)
def vgg16_bn_backbone(image_size, options):
    """Five blocks of (3x3 conv, batch norm, ReLU) x n and 2x2 max pooling; overall stride 32."""
    image = keras.Input((image_size, image_size, 3))
    x = layers.Rescaling(1 / 255, name="rescale")(image)
    for block, (convs, filters) in enumerate(zip(BLOCK_CONVS, BLOCK_FILTERS), start=1):
        channels = max(8, round(filters * options.width))
        for conv in range(1, convs + 1):
            x = layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(momentum=options.batch_norm_momentum, name=f"block{block}_bn{conv}")(x)
            x = layers.ReLU(name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(image, x, name="backbone")
