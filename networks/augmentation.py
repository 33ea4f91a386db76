"""Training-only image augmentation as Keras preprocessing layers, at the front of the model.

Keras's random preprocessing layers transform their input only when the model is called with
`training=True`; in `predict` and `evaluate` they pass images through unchanged. Placing them in
the model rather than in the data pipeline keeps the input pipeline cheap (the model never waits
for data) and, on a GPU, runs the augmentation on the device beside the network.

What each one adds to the square symmetries that the training sequence already applies:
- rotation: any angle, not only quarter turns (a dermoscopic image has no up or down);
- zoom with independent height and width factors: scale and aspect jitter, so that the model sees
  lesions at several sizes;
- aspect: a further zoom into the width alone, up to the proportions of a square crop: HAM10000's
  4:3 frames are squashed to a square, so a source that crops its images square shows every
  lesion a third wider than the training images do, unless training shows both;
- colour jitter: brightness, contrast, saturation and hue vary with the dermatoscope and camera;
- RandAugment (Cubuk et al., 2020): a few transforms drawn at random per image from a fixed list
  (shear, translation, solarisation, equalisation, ...) at one shared magnitude.
"""

from dataclasses import dataclass

import keras
from keras import layers

from networks.options import check_types


@dataclass(frozen=True)
class AugmentationOptions:
    """Strength of each random transform; 0 switches it off.

    Attributes:
        rotation: largest rotation, as a fraction of a full turn (0.5: any angle).
        zoom: largest zoom in or out, as a fraction of the side; height and width are drawn
            independently, which also jitters the aspect ratio.
        aspect: largest further zoom into the width alone, as a fraction of the side (0.25 turns
            a 4:3 frame squashed to a square into its central square's proportions).
        brightness, contrast, hue: colour jitter factors of `keras.layers.RandomColorJitter`
            (fractions of the value range).
        saturation: largest change of saturation. Keras's saturation factor is 0.5 for the
            image as it is (0: grey, 1: fully saturated), so it is drawn from
            [0.5 - saturation, 0.5 + saturation].
        rand_augment: magnitude of `keras.layers.RandAugment` (0 to 1); 0: off.
        rand_augment_ops: how many of its transforms each image gets.
    """

    rotation: float = 0.0
    zoom: float = 0.0
    aspect: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    rand_augment: float = 0.0
    rand_augment_ops: int = 2

    def __post_init__(self):
        check_types(self, "augmentation")
        if self.rand_augment_ops < 1:
            raise ValueError(f"augmentation rand_augment_ops must be at least 1; got {self.rand_augment_ops}")
        for name in ("rotation", "zoom", "aspect", "brightness", "contrast", "saturation", "hue", "rand_augment"):
            value, limit = getattr(self, name), 0.5 if name == "saturation" else 1
            if not 0 <= value <= limit:
                raise ValueError(f"augmentation {name} must be between 0 and {limit}; got {value}")

    @property
    def active(self):
        return any(
            (
                self.rotation,
                self.zoom,
                self.aspect,
                self.brightness,
                self.contrast,
                self.saturation,
                self.hue,
                self.rand_augment,
            )
        )


AUGMENTATION_NAME = "augmentation"


def build_augmentation(options, seed=None):
    """A `keras.Sequential` of the active transforms, or None when every strength is 0.

    Args:
        options: `AugmentationOptions`.
        seed: seeds the layers' random draws (the run's seed).
    """
    if not options.active:
        return None
    transforms = []
    if options.rotation:
        transforms.append(
            layers.RandomRotation(options.rotation, fill_mode="reflect", seed=seed, name="random_rotation")
        )
    if options.zoom or options.aspect:
        # Keras's negative factors zoom in: a width factor of -0.25 shows the central 75% of the width.
        transforms.append(
            layers.RandomZoom(
                (-options.zoom, options.zoom),
                (-options.zoom - options.aspect, options.zoom),
                fill_mode="reflect",
                seed=seed,
                name="random_zoom",
            )
        )
    if options.brightness or options.contrast or options.saturation or options.hue:
        transforms.append(
            layers.RandomColorJitter(
                value_range=(0, 255),
                brightness_factor=options.brightness or None,
                contrast_factor=options.contrast or None,
                saturation_factor=(0.5 - options.saturation, 0.5 + options.saturation) if options.saturation else None,
                hue_factor=options.hue or None,
                seed=seed,
                name="random_colour_jitter",
            )
        )
    if options.rand_augment:
        transforms.append(
            layers.RandAugment(
                value_range=(0, 255),
                num_ops=options.rand_augment_ops,
                factor=options.rand_augment,
                seed=seed,
                name="rand_augment",
            )
        )
    return keras.Sequential(transforms, name=AUGMENTATION_NAME)


def let_augmentation_compile(model):
    """Under JAX, marks the model's augmentation layers fit for jit compilation; returns the model.

    Keras marks its geometric layers unfit for XLA because TensorFlow's image transform has no XLA
    kernel; under JAX they are plain jax.numpy and compile. Left marked, they switch jit off for
    the whole model, and a JAX training step runs op by op, about ten times slower
    (docs/performance.md). The mark is not saved: a model loaded from a file (a resumed run's checkpoint, a
    kept model) needs this again before it is compiled or predicts.
    """
    if keras.backend.backend() != "jax":
        return model
    # Private Keras API, for want of a public one: `_flatten_layers` is the only walk that reaches
    # the layers nested inside other layers (RandAugment's own transforms), which `Model.layers`
    # does not list; `supports_jit` is what `compile`'s "auto" reads, and has no public setter.
    for layer in model._flatten_layers():
        if layer.name == AUGMENTATION_NAME:
            for transform in layer._flatten_layers(include_self=False):
                transform.supports_jit = True
    # A loaded model has resolved "auto" already, with the marks it was loaded with; under JAX
    # "auto" means jit wherever every layer supports it (`compile` resolves it again anyway).
    model.jit_compile = True
    return model
