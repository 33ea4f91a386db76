"""Every registered network at toy size: shapes, training, saving, weights, fine-tuning."""

from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
import pytest
from keras import layers

import networks
from networks import create_model, freeze_backbone, list_models, registry, unfreeze_top_blocks
from networks.colour import ShadesOfGrey
from conftest import TINY_CONFIG, run_main

pytestmark = pytest.mark.backend

# The networks written or adapted here; the pretrained zoo has its own test (test_pretrained.py).
STUDY_MODELS = ("cnn", "densenet", "vgg16", "vgg16_bn")
# Small versions of each architecture: the same code, built and trained in seconds.
TINY_OPTIONS = {
    "cnn": {"filters": [8, 16, 16, 32, 32]},
    "densenet": {"block_sizes": [2, 2, 2, 2], "growth_rate": 8, "stem_filters": 16},
    "vgg16": {},
    "vgg16_bn": {"width": 0.125},
}
TINY_HEAD = networks.HeadOptions(dense_units=(16,), metadata_units=8)
METADATA_FEATURES = 5
# The parameter counts docs/models.md states for the default configurations (image-only models).
TARGET_PARAMETERS = {"cnn": 6.0e6, "densenet": 6.0e6, "vgg16": 14.8e6, "vgg16_bn": 14.9e6}


def tiny_model(name, metadata_features=0):
    # Seeded: whether a toy network has a dead unit (a weight with zero gradient) must not depend
    # on what the tests before this one drew from Keras's global generator.
    keras.utils.set_random_seed(0)
    return create_model(name, 32, metadata_features=metadata_features, head=TINY_HEAD, options=TINY_OPTIONS[name])


def toy_batch(metadata_features, size=2, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (size, 32, 32, 3)).astype("float32")
    labels = keras.utils.to_categorical([0, 4][:size], 7)
    if metadata_features:
        return (images, rng.normal(size=(size, metadata_features)).astype("float32")), labels
    return images, labels


def test_registry_lists_the_study_models_and_the_pretrained_ones():
    names = list_models()
    assert set(STUDY_MODELS) | {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "densenet121", "convnext_tiny"} <= set(names)
    assert names == sorted(names) and len(names) == 4 + 3 + 20


def test_unknown_model_error_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnet' \(available: cnn, convnext_tiny, densenet, densenet121, "):
        create_model("resnet", 32)


def test_image_too_small_for_the_model():
    with pytest.raises(ValueError, match=r"image_size 16 is too small for model .* \(it needs at least 32\)"):
        create_model("cnn", 16)


def test_unknown_model_option():
    with pytest.raises(ValueError, match="unknown option 'depth' for model 'densenet'"):
        create_model("densenet", 32, options={"depth": 3})


@pytest.mark.parametrize(("stem_stride", "first_block_side"), [(4, 16), (2, 32), (1, 64)])
def test_densenet_stem_stride_sets_the_first_block_s_resolution(stem_stride, first_block_side):
    options = {**TINY_OPTIONS["densenet"], "stem_stride": stem_stride}
    backbone = create_model("densenet", 64, head=TINY_HEAD, options=options).get_layer("backbone")
    assert backbone.get_layer("block1_layer1_concat").output.shape[1:3] == (first_block_side, first_block_side)
    # Three transitions halve it three times.
    assert backbone.output.shape[1:3] == (first_block_side // 8, first_block_side // 8)
    with pytest.raises(ValueError, match="DenseNet stem_stride must be one of 1, 2, 4; got 3"):
        create_model("densenet", 64, options={"stem_stride": 3})


@pytest.mark.parametrize("metadata_features", [0, METADATA_FEATURES], ids=["image", "metadata"])
@pytest.mark.parametrize("name", STUDY_MODELS)
def test_forward_and_one_training_step(name, metadata_features):
    model = tiny_model(name, metadata_features)
    inputs, labels = toy_batch(metadata_features)
    probabilities = keras.ops.convert_to_numpy(model(inputs, training=False))
    assert probabilities.shape == (2, 7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="categorical_crossentropy")
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    loss = model.train_on_batch(inputs, labels)
    assert np.isfinite(loss)
    # Plain SGD moves a weight exactly when its gradient is non-zero: every weight learns.
    unchanged = [w.path for w, old in zip(model.trainable_weights, before) if np.array_equal(keras.ops.convert_to_numpy(w), old)]
    assert unchanged == []


@pytest.mark.parametrize("name", ["cnn", "vgg16"])
def test_metadata_changes_the_prediction(name):
    model = tiny_model(name, METADATA_FEATURES)
    (images, features), _ = toy_batch(METADATA_FEATURES)
    a = keras.ops.convert_to_numpy(model((images, features)))
    b = keras.ops.convert_to_numpy(model((images, features + 3.0)))
    assert not np.allclose(a, b)


@pytest.mark.parametrize("name", STUDY_MODELS)
def test_save_and_load_give_identical_predictions(name, tmp_path):
    model = tiny_model(name, METADATA_FEATURES)
    inputs, _ = toy_batch(METADATA_FEATURES)
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(model.predict(inputs, verbose=0), reloaded.predict(inputs, verbose=0))


def test_vgg16_loads_a_local_weights_file_exactly(tmp_path):
    keras.utils.set_random_seed(1)
    source = create_model("vgg16", 32).get_layer("backbone")
    path = tmp_path / "vgg16_notop.weights.h5"
    source.save_weights(path)
    keras.utils.set_random_seed(2)
    loaded = create_model("vgg16", 32, weights=str(path)).get_layer("backbone")
    for expected, actual in zip(source.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(expected), keras.ops.convert_to_numpy(actual))


def test_vgg16_missing_weights_file():
    with pytest.raises(ValueError, match="VGG16 weights file not found: nowhere.h5"):
        create_model("vgg16", 32, weights="nowhere.h5")


def test_vgg16_imagenet_offline_says_how_to_go_on(tmp_path, monkeypatch):
    import urllib.error

    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    # An empty Keras home, so that no cached weights file is found, and no network.
    monkeypatch.setattr(file_utils.config, "keras_home", lambda: str(tmp_path))
    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(ValueError) as error:
        create_model("vgg16", 32, weights="imagenet")
    message = str(error.value)
    assert "could not download the ImageNet VGG16 weights" in message
    assert "--weights PATH" in message and "--weights none" in message and "\n" not in message


def test_cnn_and_densenet_take_no_weights():
    with pytest.raises(ValueError, match="trained from scratch and takes no weights"):
        create_model("cnn", 32, weights="imagenet")


def test_two_stage_fine_tuning_flags():
    model = create_model("vgg16", 32)
    backbone = model.get_layer("backbone")
    freeze_backbone(model)
    head = {w.path for w in model.trainable_weights}
    assert head and not any(w.path.startswith("block") for w in model.trainable_weights)
    assert all(not layer.trainable for layer in backbone.layers if layer.weights)

    unfreeze_top_blocks(model, first_block=5)
    trainable = {layer.name for layer in backbone.layers if layer.weights and layer.trainable}
    assert trainable == {"block5_conv1", "block5_conv2", "block5_conv3"}
    frozen = {layer.name.split("_")[0] for layer in backbone.layers if layer.weights and not layer.trainable}
    assert frozen == {"block1", "block2", "block3", "block4"}
    assert head < {w.path for w in model.trainable_weights}


@pytest.mark.parametrize("name", STUDY_MODELS)
def test_default_parameter_counts_near_their_targets(name):
    count = create_model(name, 128).count_params()
    assert abs(count - TARGET_PARAMETERS[name]) / TARGET_PARAMETERS[name] < 0.2


def test_output_stays_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = tiny_model("cnn")
        assert model.get_layer("backbone").get_layer("block1_conv1").compute_dtype == "float16"
        assert model.output.dtype == "float32"
    finally:
        keras.config.set_dtype_policy("float32")


def test_vgg16_bn_keeps_the_vgg16_layout_at_any_width():
    full = create_model("vgg16_bn", 32).get_layer("backbone")
    stock = create_model("vgg16", 32).get_layer("backbone")
    convs = lambda backbone: [(l.name, l.filters) for l in backbone.layers if isinstance(l, keras.layers.Conv2D)]
    assert convs(full) == convs(stock)
    quarter = create_model("vgg16_bn", 32, options={"width": 0.25}).get_layer("backbone")
    assert [filters for _, filters in convs(quarter)] == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    assert sum(isinstance(l, keras.layers.BatchNormalization) for l in quarter.layers) == 13


def augmentation_batch():
    rng = np.random.default_rng(0)
    # Smooth, skin-coloured images, so that colour statistics are meaningful.
    base = np.array([180.0, 140.0, 150.0], dtype="float32")
    ramp = np.linspace(-30, 30, 32, dtype="float32")[None, :, None, None]
    return np.clip(base + ramp + rng.normal(0, 5, (8, 32, 32, 3)).astype("float32"), 0, 255)


def test_augmentation_is_training_only_and_keeps_colours_on_average():
    options = networks.AugmentationOptions(rotation=0.5, zoom=0.2, brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02)
    augmentation = networks.build_augmentation(options, seed=0)
    images = augmentation_batch()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augmentation(images, training=False)), images)
    augmented = keras.ops.convert_to_numpy(augmentation(images, training=True))
    assert augmented.shape == images.shape and not np.allclose(augmented, images)
    # Mild jitter: the mean colour moves by a few levels, never to grey or a new hue.
    np.testing.assert_allclose(augmented.mean(axis=(0, 1, 2)), images.mean(axis=(0, 1, 2)), atol=12)


def test_aspect_stretches_the_width_alone_up_to_a_square_crop_s_proportions():
    # A vertical stripe 8 columns wide in the middle of each image.
    images = np.zeros((16, 32, 32, 3), dtype="float32")
    images[:, :, 12:20] = 255.0
    augmentation = networks.build_augmentation(networks.AugmentationOptions(aspect=0.25), seed=0)
    augmented = keras.ops.convert_to_numpy(augmentation(images, training=True))
    # The height is untouched: each column is still one value from top to bottom.
    np.testing.assert_allclose(augmented.std(axis=1), 0, atol=1e-3)
    # The width is only ever zoomed into, by at most a third (a 4:3 frame's centre square).
    widths = (augmented[:, 0, :, 0] > 127).sum(axis=1)
    assert widths.min() >= 8 and widths.max() <= round(8 / 0.75) and widths.max() > 8


def test_rand_augment_is_training_only_and_changes_images():
    augmentation = networks.build_augmentation(networks.AugmentationOptions(rand_augment=0.5, rand_augment_ops=2), seed=0)
    assert [layer.name for layer in augmentation.layers] == ["rand_augment"]
    images = augmentation_batch()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augmentation(images, training=False)), images)
    augmented = keras.ops.convert_to_numpy(augmentation(images, training=True))
    assert augmented.shape == images.shape and not np.allclose(augmented, images)
    assert augmented.min() >= 0 and augmented.max() <= 255


def test_no_augmentation_when_every_strength_is_zero():
    assert networks.build_augmentation(networks.AugmentationOptions()) is None
    with pytest.raises(ValueError, match="augmentation saturation must be between 0 and 0.5; got 0.8"):
        networks.AugmentationOptions(saturation=0.8)


def test_model_with_augmentation_predicts_like_one_without():
    keras.utils.set_random_seed(0)
    plain = tiny_model("cnn")
    augmented = create_model(
        "cnn", 32, head=TINY_HEAD, options=TINY_OPTIONS["cnn"],
        augmentation=networks.build_augmentation(networks.AugmentationOptions(rotation=0.5, zoom=0.2)),
    )
    augmented.set_weights(plain.get_weights())
    images, _ = toy_batch(0)
    np.testing.assert_allclose(augmented.predict(images, verbose=0), plain.predict(images, verbose=0), rtol=1e-6)


@dataclass(frozen=True)
class PlainOptions:
    filters: int = 8


@pytest.fixture
def plain_model(monkeypatch):
    """A new architecture added the way docs/models.md says: one decorated backbone function."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @registry.register_backbone("plain", options=PlainOptions, description="two convolutions, for the test")
    def plain_backbone(image_size, options):
        image = keras.Input((image_size, image_size, 3))
        x = layers.Rescaling(1 / 255)(image)
        x = layers.Conv2D(options.filters, 3, strides=2, padding="same", activation="relu", name="block1_conv")(x)
        x = layers.Conv2D(options.filters, 3, strides=2, padding="same", activation="relu", name="block2_conv")(x)
        return keras.Model(image, x)  # unnamed: create_model names it "backbone"

    return "plain"


def test_a_model_registered_elsewhere_trains_saves_and_loads(plain_model, toy_dir, tmp_path):
    assert plain_model in list_models()
    model = create_model(plain_model, 32, metadata_features=METADATA_FEATURES, options={"filters": 4})
    assert model.name == "plain_meta" and model.get_layer("backbone").output.shape[1:] == (8, 8, 4)

    assert run_main("--model", plain_model, "--config", TINY_CONFIG, "--data-dir", toy_dir, "--output-dir", tmp_path) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    loaded = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert loaded.name == plain_model and loaded.get_layer("backbone").get_layer("block2_conv").filters == PlainOptions.filters
    assert len(pd.read_csv(run_dir / "predictions.csv")) > 0


# === Shades-of-grey colour constancy ===


def minkowski_light(images, power):
    return np.mean((images / 255.0) ** power, axis=(1, 2)) ** (1 / power)


def test_shades_of_grey_turns_a_coloured_light_grey_and_leaves_a_grey_one_alone():
    rng = np.random.default_rng(0)
    grey_lit = rng.uniform(20, 160, size=(2, 16, 16, 1)).repeat(3, axis=-1).astype("float32")
    cast = (grey_lit * np.array([1.3, 1.0, 0.7], dtype="float32")).clip(0, 255)
    layer = ShadesOfGrey(power=6)
    balanced = keras.ops.convert_to_numpy(layer(cast))
    light = minkowski_light(balanced, 6)
    np.testing.assert_allclose(light, light[:, :1].repeat(3, axis=1), rtol=1e-3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(grey_lit)), grey_lit, rtol=1e-4, atol=1e-3)


def test_model_with_colour_constancy_saves_and_loads(tmp_path):
    model = create_model("cnn", 32, options={"filters": [8, 8, 8, 8, 8]}, colour_constancy=6)
    images = np.random.default_rng(1).uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.get_layer("shades_of_grey").power == 6
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5)


def test_shades_of_grey_refuses_a_power_below_one():
    with pytest.raises(ValueError, match="at least 1"):
        ShadesOfGrey(power=0.5)
