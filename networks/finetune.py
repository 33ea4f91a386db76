"""Two-stage fine-tuning of a pretrained backbone.

Both functions act on the layer named "backbone" that every classifier in this package has,
and on its layers' names, which start with "block<n>_" (as in VGG16). Recompile the model after
calling either: Keras fixes the set of trainable weights when it compiles.
"""

import re

BACKBONE = "backbone"


def freeze_backbone(model):
    """Stage one: only the head trains."""
    model.get_layer(BACKBONE).trainable = False


def unfreeze_top_blocks(model, first_block):
    """Stage two: blocks `first_block` and above train; the blocks below stay frozen.

    Returns:
        The names of the layers made trainable.
    """
    backbone = model.get_layer(BACKBONE)
    backbone.trainable = True
    unfrozen = []
    for layer in backbone.layers:
        match = re.match(r"block(\d+)_", layer.name)
        layer.trainable = bool(match) and int(match.group(1)) >= first_block
        if layer.trainable and layer.weights:
            unfrozen.append(layer.name)
    if not unfrozen:
        raise ValueError(f"the backbone has no block {first_block} or above to fine-tune")
    return unfrozen
