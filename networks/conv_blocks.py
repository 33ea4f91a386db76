"""Plain conv-block backbones trained from scratch: `cnn` (the baseline every other architecture has
to beat) and `vgg16_bn` (VGG16's layout with batch norm), one loop of blocks with two sets of options.

A block is (3x3 conv, batch norm, ReLU) x n followed by 2x2 max pooling; each block halves the
resolution. Fully convolutional: with the head's global max pooling the model looks for lesion
features wherever they are in the frame, and it takes any input size of at least 2 ** blocks.

`vgg16_bn` is the layer layout of VGG16 (Simonyan & Zisserman, 2015: 13 3x3 convolutions in five
blocks of 2, 2, 3, 3 and 3) with a batch norm after every convolution, as in torchvision's
`vgg16_bn`. Without ImageNet weights the stock VGG16 (`vgg16`) barely learns: nothing rescales the
signal between its 13 ReLU layers. Batch norm does, so this variant trains like a modern network
from random weights. `width` scales every block's channels, so that it fits a CPU budget (width
0.25: 16-128 channels, about 0.9 M parameters instead of 14.7 M).
"""

from dataclasses import dataclass

import keras
from keras import layers

from networks.options import check_positive, check_types
from networks.registry import Width, register_backbone

VGG16_BLOCK_CONVS = (2, 2, 3, 3, 3)
VGG16_BLOCK_FILTERS = (64, 128, 256, 512, 512)


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


def conv_block_backbone(image_size, blocks, batch_norm_momentum):
    """The backbone of `blocks`, (convolutions, channels) per block, from images in [0, 255]."""
    image = keras.Input((image_size, image_size, 3))
    x = layers.Rescaling(1 / 255, name="rescale")(image)
    for block, (convs, filters) in enumerate(blocks, start=1):
        for conv in range(1, convs + 1):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(momentum=batch_norm_momentum, name=f"block{block}_bn{conv}")(x)
            x = layers.ReLU(name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(image, x, name="backbone")


@register_backbone(
    "cnn",
    options=CNNOptions,
    description="plain deep CNN (conv-BN-ReLU blocks), trained from scratch",
    width=Width("filters"),
    toy_options={"filters": [8, 16, 16, 32, 32]},
    parameters=5_805_759,
)
def cnn_backbone(image_size, options):
    return conv_block_backbone(
        image_size, [(options.convs_per_block, filters) for filters in options.filters], options.batch_norm_momentum
    )


@register_backbone(
    "vgg16_bn",
    options=VGG16BNOptions,
    description="VGG16 layout with batch norm and a width option, trained from scratch",
    width=Width("width", maximum=4.0),
    toy_options={"width": 0.125},
    parameters=14_860_487,
)
def vgg16_bn_backbone(image_size, options):
    blocks = [
        (convs, max(8, round(filters * options.width)))
        for convs, filters in zip(VGG16_BLOCK_CONVS, VGG16_BLOCK_FILTERS)
    ]
    return conv_block_backbone(image_size, blocks, options.batch_norm_momentum)
