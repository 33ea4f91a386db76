"""The `keras.applications` zoo as registered backbones, through one adapter.

Each entry of `ZOO` names a `keras.applications` constructor, the input preprocessing its ImageNet
weights expect, its smallest input side, and how its layer names give the blocks that two-stage
fine-tuning unfreezes (`networks.finetune.Blocks`). Every one takes `weights` "imagenet"
(downloaded by Keras on first use into ~/.keras/models), the path of a weights file for the
network without its top, or None (trained from scratch, in one stage).

The backbone is one flat functional model, preprocessing included (the constructor's
`input_tensor`), so Grad-CAM finds its feature maps as in every other backbone.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from common.console import warnings_only_on_success
from common.errors import UserError
from networks.finetune import Blocks
from networks.registry import register_backbone

# `keras.applications.imagenet_utils.preprocess_input` modes: "caffe" (BGR minus the ImageNet
# means), "tf" (to [-1, 1]), "torch" (to [0, 1], then standardised), or "none" where the model
# preprocesses its own [0, 255] input.
PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")


@dataclass(frozen=True)
class ZooModel:
    constructor: str  # the keras.applications function
    preprocessing: str  # a PREPROCESSING_MODES entry
    blocks: Blocks
    min_image_size: int = 32


_DENSE_RESIDUAL = Blocks(r"^conv(\d)_block", offset=-1)  # conv2..conv5 -> blocks 1..4
_EFFICIENTNET = Blocks(r"^block(\d)[a-z]_")
_MOBILENET_V3 = Blocks(r"^expanded_conv(?:_(\d+))?_", offset=1)
ZOO = {
    "densenet121": ZooModel("DenseNet121", "torch", _DENSE_RESIDUAL),
    "densenet169": ZooModel("DenseNet169", "torch", _DENSE_RESIDUAL),
    "densenet201": ZooModel("DenseNet201", "torch", _DENSE_RESIDUAL),
    "resnet50": ZooModel("ResNet50", "caffe", _DENSE_RESIDUAL),
    "resnet50v2": ZooModel("ResNet50V2", "tf", _DENSE_RESIDUAL),
    **{f"efficientnet_b{n}": ZooModel(f"EfficientNetB{n}", "none", _EFFICIENTNET) for n in range(5)},
    **{f"efficientnet_v2_b{n}": ZooModel(f"EfficientNetV2B{n}", "none", _EFFICIENTNET) for n in range(4)},
    "efficientnet_v2_s": ZooModel("EfficientNetV2S", "none", _EFFICIENTNET),
    # A stage's downsampling layers come before it and carry no stage number: they join the next.
    "convnext_tiny": ZooModel("ConvNeXtTiny", "none", Blocks(r"_stage_(\d)_", unnamed="next", offset=1)),
    "mobilenet_v3_small": ZooModel("MobileNetV3Small", "none", _MOBILENET_V3),
    "mobilenet_v3_large": ZooModel("MobileNetV3Large", "none", _MOBILENET_V3),
    # A block's branches come before the "mixed<n>" concatenation that names it.
    "inception_v3": ZooModel("InceptionV3", "tf", Blocks(r"^mixed(\d+)$", unnamed="next", offset=1), min_image_size=75),
    "xception": ZooModel("Xception", "tf", Blocks(r"^block(\d+)_"), min_image_size=71),
}


@dataclass(frozen=True)
class ApplicationOptions:
    """A `keras.applications` network has a fixed architecture; its weights are passed separately."""


@keras.saving.register_keras_serializable(package="networks")
class ImageNetPreprocessing(layers.Layer):
    """RGB images in [0, 255] to the input a `keras.applications` model's ImageNet weights expect.

    Args:
        mode: "caffe", "tf" or "torch", as `keras.applications.imagenet_utils.preprocess_input`.
    """

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES[:-1]:
            raise ValueError(
                f"unknown preprocessing mode {mode!r} (expected one of {', '.join(PREPROCESSING_MODES[:-1])})"
            )
        self.mode = mode

    def call(self, images):
        return keras.applications.imagenet_utils.preprocess_input(images, mode=self.mode)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def application_backbone(constructor, image_size, weights, preprocessing=None, label=None):
    """A `keras.applications` network without its top, behind an optional preprocessing layer, as
    one flat model named "backbone".

    Args:
        constructor: the `keras.applications` function.
        image_size: side of the input images.
        weights: "imagenet", a weights file of the network without its top, or None.
        preprocessing: a layer applied to the [0, 255] image first, or None.
        label: the network's name in messages.

    Raises:
        UserError: the ImageNet weights could not be downloaded (offline: the message names the
            file to fetch and `--weights PATH`), or the file does not fit the network.
    """
    label = label or constructor.__name__
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise UserError(f"{label} weights file not found: {weights} (pass imagenet, none or an existing weights file)")
    image = keras.Input((image_size, image_size, 3))
    x = preprocessing(image) if preprocessing is not None else image
    try:
        # With `input_tensor` the network starts at `x`: one flat model, preprocessing included,
        # whose weighted layers still line up with the weights file's.
        with warnings_only_on_success():
            network = constructor(include_top=False, weights=weights, input_tensor=x)
    except Exception as error:
        message = str(error)
        if "URL fetch failure" in message:
            url = re.search(r"URL fetch failure on (\S+?):? ", message)
            where = f" ({url.group(1)})" if url else ""
            raise UserError(
                f"could not download the ImageNet {label} weights (no internet?): fetch "
                f"{Path(url.group(1)).name if url else 'them'} elsewhere{where} and pass --weights PATH, "
                "or pass --weights none to train from scratch"
            ) from None
        if weights not in (None, "imagenet"):
            first_line = message.strip().splitlines()[0] if message.strip() else type(error).__name__
            raise UserError(f"{weights}: not weights of {label} without its top ({first_line})") from None
        raise
    return keras.Model(image, network.output, name="backbone")


def _register(name, entry):
    @register_backbone(
        name,
        options=ApplicationOptions,
        pretrained=True,
        min_image_size=entry.min_image_size,
        blocks=entry.blocks,
        description=f"{entry.constructor} from keras.applications; ImageNet (download), local or no weights",
    )
    def backbone(image_size, options, weights):
        preprocessing = (
            None
            if entry.preprocessing == "none"
            else ImageNetPreprocessing(entry.preprocessing, name="imagenet_preprocessing")
        )
        return application_backbone(
            getattr(keras.applications, entry.constructor), image_size, weights, preprocessing, entry.constructor
        )

    return backbone


for _name, _entry in ZOO.items():
    _register(_name, _entry)
