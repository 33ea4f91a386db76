"""DenseNet-BC, written out here and trained from scratch.

Reference: G. Huang, Z. Liu, L. van der Maaten, K. Q. Weinberger, "Densely Connected
Convolutional Networks", CVPR 2017, arXiv:1608.06993.

Every layer of a dense block sees the feature maps of all layers before it in the block, which
reuses features and needs few parameters for its depth. "BC" is the variant with Bottleneck
layers (a 1x1 convolution to 4k channels before each 3x3) and Compression (transitions halve the
channels).
"""

from dataclasses import dataclass

import keras
from keras import layers

from networks.options import check_positive, check_types
from networks.registry import Width, register_backbone

STEM_STRIDES = (1, 2, 4)


@dataclass(frozen=True)
class DenseNetOptions:
    """Options of DenseNet-BC.

    Attributes:
        block_sizes: layers per dense block (DenseNet-121: 6, 12, 24, 16).
        growth_rate: channels each layer adds (k in the paper).
        compression: fraction of channels a transition keeps (theta; 0.5 in DenseNet-BC).
        bottleneck_factor: the 1x1 bottleneck has bottleneck_factor * growth_rate channels.
        stem_filters: channels of the stem convolution (2k in the paper).
        stem_stride: how much the stem shrinks the image before the first block: 4, the paper's
            ImageNet stem (7x7 convolution at stride 2, 3x3 max pooling at stride 2); 2, a 3x3
            convolution at stride 2; 1, the paper's CIFAR stem (a 3x3 convolution). Small images
            keep more of their detail for the blocks with a smaller stride, at more computation.
        batch_norm_momentum: momentum of the batch-norm moving statistics used at inference.
    """

    block_sizes: tuple = (6, 12, 20, 12)
    growth_rate: int = 32
    compression: float = 0.5
    bottleneck_factor: int = 4
    stem_filters: int = 64
    stem_stride: int = 4
    batch_norm_momentum: float = 0.9

    def __post_init__(self):
        check_types(self, "DenseNet")
        check_positive(self, "DenseNet", "block_sizes", "growth_rate", "bottleneck_factor", "stem_filters")
        if self.stem_stride not in STEM_STRIDES:
            raise ValueError(
                f"DenseNet stem_stride must be one of {', '.join(map(str, STEM_STRIDES))}; got {self.stem_stride}"
            )
        if not 0 < self.compression <= 1:
            raise ValueError(f"DenseNet compression must be in (0, 1]; got {self.compression}")


@register_backbone(
    "densenet",
    options=DenseNetOptions,
    description="DenseNet-BC (Huang et al., 2017), trained from scratch",
    width=Width("growth_rate", minimum=2),
    toy_options={"block_sizes": [2, 2, 2, 2], "growth_rate": 8, "stem_filters": 16},
    parameters=5_731_143,
)
def densenet_backbone(image_size, options):
    """Stem, dense blocks with transitions between them, and a final batch norm and ReLU. With the
    ImageNet stem (stem_stride 4) and four blocks, an overall stride of 32, as in the paper's
    ImageNet models.
    """
    image = keras.Input((image_size, image_size, 3))
    x = layers.Rescaling(1 / 255, name="rescale")(image)
    kernel, conv_stride = (7, 2) if options.stem_stride == 4 else (3, options.stem_stride)
    x = layers.Conv2D(
        options.stem_filters, kernel, strides=conv_stride, padding="same", use_bias=False, name="stem_conv"
    )(x)
    x = layers.BatchNormalization(momentum=options.batch_norm_momentum, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    if options.stem_stride == 4:
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for block, size in enumerate(options.block_sizes, start=1):
        for layer in range(1, size + 1):
            x = _dense_layer(x, options, name=f"block{block}_layer{layer}")
        if block < len(options.block_sizes):
            x = _transition(x, options, name=f"transition{block}")
    x = layers.BatchNormalization(momentum=options.batch_norm_momentum, name="final_bn")(x)
    x = layers.ReLU(name="final_relu")(x)
    return keras.Model(image, x, name="backbone")


def _dense_layer(x, options, name):
    """BN-ReLU-1x1 conv (bottleneck), BN-ReLU-3x3 conv; its k new channels join the input's."""
    y = layers.BatchNormalization(momentum=options.batch_norm_momentum, name=f"{name}_bn1")(x)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(options.bottleneck_factor * options.growth_rate, 1, use_bias=False, name=f"{name}_conv1")(y)
    y = layers.BatchNormalization(momentum=options.batch_norm_momentum, name=f"{name}_bn2")(y)
    y = layers.ReLU(name=f"{name}_relu2")(y)
    y = layers.Conv2D(options.growth_rate, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    return layers.Concatenate(name=f"{name}_concat")([x, y])


def _transition(x, options, name):
    """BN-ReLU-1x1 conv to compression * channels, then 2x2 average pooling."""
    channels = max(1, int(x.shape[-1] * options.compression))
    x = layers.BatchNormalization(momentum=options.batch_norm_momentum, name=f"{name}_bn")(x)
    x = layers.ReLU(name=f"{name}_relu")(x)
    x = layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_conv")(x)
    return layers.AveragePooling2D(2, name=f"{name}_pool")(x)
