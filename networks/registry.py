"""Models by name: `create_model("densenet", image_size=128)` is what `--model densenet` runs.

A model is a backbone and the shared head (`networks.heads`), as keras-hub separates `Backbone`
and `ImageClassifier`. Each model module registers one backbone function with
`@register_backbone`: it takes the image size and the model's options dataclass (and the weights,
for a pretrained model) and returns a `keras.Model` from (size, size, 3) images with values in
[0, 255] to a feature map. `create_model` attaches the head, the same for every backbone.
"""

import dataclasses
from dataclasses import dataclass
from typing import Callable

import keras

from networks.finetune import BACKBONE, Blocks
from networks.heads import HeadOptions, build_classifier

_REGISTRY = {}


@dataclass(frozen=True)
class Width:
    """How the tuner scales a model's width (`training.tuning`, the "width" hyper-parameter).

    Attributes:
        option: the options field that sets the width: a whole number (a growth rate), a tuple of
            them (a width per block) or a number (a multiplier).
        minimum: the smallest whole number a scaled width may take; a multiplier (a field annotated
            float) is not bounded below.
        maximum: the largest value a scaled width may take, or None.
    """

    option: str
    minimum: int = 1
    maximum: float | None = None

    def scaled(self, options, scale):
        """{option: the options' width times `scale`}, as YAML would write it (a list, not a tuple)."""
        value = getattr(options, self.option)
        # The annotation, not the value, says what the width is: YAML's `width: 1` is a multiplier.
        multiplier = {field.name: field.type for field in dataclasses.fields(options)}[self.option] is float
        if isinstance(value, tuple):
            return {self.option: [self._scaled(width, scale, multiplier) for width in value]}
        return {self.option: self._scaled(value, scale, multiplier)}

    def _scaled(self, value, scale, multiplier):
        # round(..., 4): a multiplier without float noise (0.5 * 0.3 is 0.15, not 0.15000000000000002).
        scaled = round(value * scale, 4) if multiplier else max(int(round(value * scale)), self.minimum)
        return scaled if self.maximum is None else min(scaled, self.maximum)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model.

    Attributes:
        name: what `--model` takes.
        backbone: `backbone(image_size, options)`, or `backbone(image_size, options, weights)`
            for a pretrained model: images in [0, 255] to a feature map.
        options: the dataclass of the model's architecture options, with its defaults.
        description: one line for `--help`.
        pretrained: whether the model accepts `weights` ("imagenet" or a file); such a model is
            trained in two stages (head first, then the top of the backbone).
        min_image_size: the smallest input side the model can take.
        blocks: how the backbone's layer names give the blocks that fine-tuning unfreezes from
            `fine_tune_from_block` up.
        width: how the tuner scales the model's width (`Width`), or None where it has no width
            option to search (a pretrained network's width is its weights').
        toy_options: overrides of `options` that give a small version of the model, the same code
            built and trained in seconds at 32 px: the network tests (tests/test_networks.py) run
            every model that has one. None for the pretrained zoo, which tests/test_pretrained.py
            covers at its own sizes.
        parameters: the parameter count with the default options and head, image-only (docs/models.md
            states it), which the tests check; None where it is not stated.
    """

    name: str
    backbone: Callable
    options: type
    description: str
    pretrained: bool = False
    min_image_size: int = 32
    blocks: Blocks = Blocks()
    width: Width | None = None
    toy_options: dict | None = None
    parameters: int | None = None


def register_backbone(name, *, options, description, **facts):
    """Decorator that registers a backbone function as the model `name`.

    `facts` are `ModelEntry`'s optional fields: pretrained, min_image_size, blocks, width,
    toy_options, parameters.
    """

    def add(backbone):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, backbone, options, description, **facts)
        return backbone

    return add


def list_models():
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def get_model_entry(name):
    """The registry entry of a model; an unknown name raises ValueError listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r} (available: {', '.join(list_models())})")
    return _REGISTRY[name]


def model_options(name, overrides=None):
    """The model's options dataclass with `overrides` applied; unknown keys raise ValueError."""
    entry = get_model_entry(name)
    overrides = dict(overrides or {})
    known = {field.name for field in dataclasses.fields(entry.options)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"unknown option {', '.join(map(repr, unknown))} for model {name!r} "
            f"(its options are {', '.join(sorted(known))})"
        )
    # YAML gives lists where the dataclasses hold tuples.
    overrides = {key: tuple(value) if isinstance(value, list) else value for key, value in overrides.items()}
    return entry.options(**overrides)


def check_input(name, image_size, weights=None):
    """Raises ValueError where model `name` cannot take `image_size`, or takes no `weights`."""
    entry = get_model_entry(name)
    if image_size < entry.min_image_size:
        raise ValueError(
            f"image_size {image_size} is too small for model {name!r} (it needs at least {entry.min_image_size})"
        )
    if weights is not None and not entry.pretrained:
        raise ValueError(f"model {name!r} is trained from scratch and takes no weights; got weights={weights!r}")


def create_model(
    name,
    image_size,
    *,
    num_classes=7,
    metadata_features=0,
    head=None,
    options=None,
    weights=None,
    augmentation=None,
    colour_constancy=0,
):
    """Builds a registered model: its backbone, then the shared head.

    Args:
        name: a registered name (`list_models()`).
        image_size: side of the square input images.
        num_classes: size of the softmax output.
        metadata_features: length of the metadata vector; 0 builds an image-only model, more
            builds the hybrid head with a second input.
        head: a `HeadOptions`; default `HeadOptions()`.
        options: a dict of overrides of the model's options dataclass, or an instance of it.
        weights: for pretrained models only: "imagenet", a weights file, or None.
        augmentation: optional `keras.Sequential` of training-only preprocessing layers
            (`networks.augmentation.build_augmentation`) put in front of the backbone.
        colour_constancy: power of the shades-of-grey layer put first (`networks.colour`); 0: none.

    Returns:
        A `keras.Model` named `name` (`<name>_meta` with metadata) whose backbone is the nested
        model "backbone", which fine-tuning and Grad-CAM look up.

    Raises:
        ValueError: unknown name or option, an image size the model cannot take, or weights for
            a model that has none.
    """
    check_input(name, image_size, weights)
    entry = get_model_entry(name)
    if not isinstance(options, entry.options):
        options = model_options(name, options)
    backbone = entry.backbone(image_size, options, weights) if entry.pretrained else entry.backbone(image_size, options)
    if backbone.name != BACKBONE:
        backbone = keras.Model(backbone.input, backbone.output, name=BACKBONE)
    return build_classifier(
        backbone,
        image_size=image_size,
        num_classes=num_classes,
        metadata_features=metadata_features,
        head=head or HeadOptions(),
        name=f"{name}_meta" if metadata_features else name,
        augmentation=augmentation,
        colour_constancy=colour_constancy,
    )
