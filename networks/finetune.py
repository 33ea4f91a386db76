"""Two-stage fine-tuning of a pretrained backbone (Keras's transfer-learning guide).

Stage one freezes the backbone: only the new head trains, and the backbone's batch-norm layers
run in inference mode (Keras 3 runs a non-trainable `BatchNormalization` with its moving
statistics). Stage two unfreezes the blocks from `first_block` up; batch-norm layers stay frozen,
in inference mode, unless asked otherwise: their ImageNet statistics are better estimates than a
small batch of skin lesions gives, and updating them would shift the features the head has
learnt. Recompile the model after calling either function: Keras fixes the set of trainable
weights when it compiles.

Which block a layer belongs to is read from its name (`Blocks`): "block4_conv1" (VGG16),
"block4a_expand_conv" (EfficientNet), "conv4_block2_1_conv" (ResNet, DenseNet), "mixed4"
(Inception). Layers whose names carry no block number (a stem, a shared activation, the top
convolution) belong to the block before them, or to the one after them where a model names a
block by the layer that ends it (Inception's "mixed<n>" concatenations).
"""

import re
from dataclasses import dataclass

from keras import layers

BACKBONE = "backbone"


@dataclass(frozen=True)
class Blocks:
    """How a backbone's layer names give their block numbers.

    Attributes:
        pattern: a regular expression whose first group, in a layer's name, is its block number.
        unnamed: "previous" (a layer without a number belongs to the last block before it; the
            stem to block 0) or "next" (to the first block after it; the top to the last block + 1).
        offset: added to every number read, so that blocks count from 1 up, as `fine_tune_from_block`
            does.
    """

    pattern: str = r"^block(\d+)_"
    unnamed: str = "previous"
    offset: int = 0

    def numbers(self, backbone):
        """{layer name: block number} for every layer of the backbone, in its order."""
        found = []
        for layer in backbone.layers:
            match = re.search(self.pattern, layer.name)
            # A match without a number (MobileNetV3's first "expanded_conv_") is block 0 before the offset.
            found.append(int(match.group(1) or 0) + self.offset if match else None)
        ordered = found if self.unnamed == "previous" else found[::-1]
        numbers, current = (
            [],
            0 if self.unnamed == "previous" else max([n for n in found if n is not None], default=0) + 1,
        )
        for number in ordered:
            current = number if number is not None else current
            numbers.append(current)
        if self.unnamed == "next":
            numbers.reverse()
        return {layer.name: number for layer, number in zip(backbone.layers, numbers)}


def freeze_backbone(model):
    """Stage one: only the head trains; the backbone's batch norm runs in inference mode."""
    model.get_layer(BACKBONE).trainable = False


def unfreeze_top_blocks(model, first_block, blocks=Blocks(), train_batch_norm=False):
    """Stage two: blocks `first_block` and above train; the blocks below stay frozen.

    Args:
        model: a classifier with a nested "backbone".
        first_block: the lowest block that trains (1 unfreezes every block; the stem stays frozen).
        blocks: how the backbone's layer names give their blocks.
        train_batch_norm: let the unfrozen blocks' batch-norm layers train (and use batch
            statistics) too.

    Returns:
        The names of the layers with weights made trainable.

    Raises:
        ValueError: the backbone has no block `first_block` or above.
    """
    backbone = model.get_layer(BACKBONE)
    backbone.trainable = True
    numbers = blocks.numbers(backbone)
    unfrozen = []
    for layer in backbone.layers:
        in_top = numbers[layer.name] >= first_block
        layer.trainable = in_top and (train_batch_norm or not isinstance(layer, layers.BatchNormalization))
        if layer.trainable and layer.weights:
            unfrozen.append(layer.name)
    if not unfrozen:
        last = max(numbers.values(), default=0)
        raise ValueError(f"the backbone has no block {first_block} or above to fine-tune (its blocks go up to {last})")
    return unfrozen


def backbone_variables(model):
    """The trainable variables of the model's backbone (which fine-tune at a lower rate)."""
    return model.get_layer(BACKBONE).trainable_variables
