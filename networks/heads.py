"""The classification head shared by every backbone, with optional metadata fusion.

    image features --pool--> vector --[concat metadata branch]--> dense, dropout --> softmax

The simple head sees only the image. The hybrid head (`metadata_features > 0`) concatenates a
small dense embedding of the metadata vector (age, sex, anatomical site; see
`dataset.features.MetadataEncoder`) with the pooled image features before its dense layers, so
every backbone gets the same fusion.
"""

from dataclasses import dataclass

import keras
from keras import layers

from networks.colour import ShadesOfGrey
from networks.options import check_positive, check_types

POOLINGS = ("max", "avg")


@dataclass(frozen=True)
class HeadOptions:
    """Options of the classification head.

    Attributes:
        pooling: "max" (global max pooling: a lesion feature counts wherever it appears) or
            "avg".
        dense_units: widths of the hidden dense layers after pooling (and fusion).
        dropout: dropout rate before each dense layer.
        metadata_units: width of the dense embedding of the metadata vector before fusion; it
            brings the metadata to a scale comparable with the image features.
    """

    pooling: str = "max"
    dense_units: tuple = (256,)
    dropout: float = 0.5
    metadata_units: int = 32

    def __post_init__(self):
        check_types(self, "head")
        check_positive(self, "head", "dense_units", "metadata_units")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown head pooling {self.pooling!r} (expected one of {', '.join(POOLINGS)})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"head dropout must be in [0, 1); got {self.dropout}")


def build_classifier(
    backbone, *, image_size, num_classes, metadata_features, head, name, augmentation=None, colour_constancy=0
):
    """Puts a head on a backbone and returns the whole classifier.

    Args:
        backbone: a `keras.Model` from (size, size, 3) images with values in [0, 255] to a
            feature map; it does its own input preprocessing.
        image_size: side of the input images.
        num_classes: size of the softmax output.
        metadata_features: length of the metadata vector, or 0 for an image-only model.
        head: `HeadOptions`.
        name: the model's name (shown in summaries and saved files).
        augmentation: optional training-only preprocessing layers (`networks.augmentation`)
            applied to the image before the backbone; identity at inference.
        colour_constancy: the power of shades-of-grey colour constancy (`networks.colour`)
            applied to every image first, in training and inference alike; 0 for none.

    Returns:
        A `keras.Model` with input "image" (and "metadata" when `metadata_features > 0`) and a
        float32 softmax output of shape (batch, num_classes), float32 so that mixed precision
        keeps the probabilities and the loss exact.
    """
    image = keras.Input((image_size, image_size, 3), name="image")
    x = ShadesOfGrey(colour_constancy, name="shades_of_grey")(image) if colour_constancy else image
    features = backbone(augmentation(x) if augmentation is not None else x)
    pool = layers.GlobalMaxPooling2D if head.pooling == "max" else layers.GlobalAveragePooling2D
    x = pool(name="pool")(features)
    inputs = [image]
    if metadata_features:
        metadata = keras.Input((metadata_features,), name="metadata")
        inputs.append(metadata)
        embedded = layers.Dense(head.metadata_units, activation="relu", name="metadata_embedding")(metadata)
        x = layers.Concatenate(name="fusion")([x, embedded])
    for index, units in enumerate(head.dense_units):
        x = layers.Dropout(head.dropout, name=f"head_dropout_{index}")(x)
        x = layers.Dense(units, activation="relu", name=f"head_dense_{index}")(x)
    x = layers.Dropout(head.dropout, name="output_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs if metadata_features else image, outputs, name=name)
