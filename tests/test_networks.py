"""Every registered network at toy size: shapes, training, saving, weights, fine-tuning."""

import dataclasses
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, TINY_CONFIG, run_main
from keras import layers

import networks
from inference.gradcam import GradCAM
from networks import (
    create_model,
    freeze_backbone,
    get_model_entry,
    list_models,
    model_options,
    registry,
    unfreeze_top_blocks,
)
from networks.colour import ShadesOfGrey

pytestmark = pytest.mark.backend

# Every model with a toy version (`ModelEntry.toy_options`): the networks written or adapted here.
# The pretrained zoo has none and its own tests (test_pretrained.py).
TOY_MODELS = [name for name in list_models() if get_model_entry(name).toy_options is not None]
STATED_PARAMETERS = [name for name in list_models() if get_model_entry(name).parameters is not None]
TINY_HEAD = networks.HeadOptions(dense_units=(16,), metadata_units=8)
METADATA_FEATURES = 5


def tiny_model(name, metadata_features=0):
    # Seeded: whether a toy network has a dead unit (a weight with zero gradient) must not depend
    # on what the tests before this one drew from Keras's global generator.
    keras.utils.set_random_seed(0)
    options = get_model_entry(name).toy_options
    return create_model(name, 32, metadata_features=metadata_features, head=TINY_HEAD, options=options)


def toy_batch(metadata_features, size=2, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (size, 32, 32, 3)).astype("float32")
    labels = keras.utils.to_categorical([0, 4][:size], 7)
    if metadata_features:
        return (images, rng.normal(size=(size, metadata_features)).astype("float32")), labels
    return images, labels


def test_registry_lists_the_study_models_and_the_pretrained_ones():
    names = list_models()
    assert {"cnn", "densenet", "vgg16", "vgg16_bn"} <= set(TOY_MODELS)
    pretrained = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "densenet121", "convnext_tiny"}
    assert pretrained <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", list_models())
def test_each_entry_describes_a_model_its_options_can_build(name):
    entry = get_model_entry(name)
    assert entry.name == name and entry.description and "\n" not in entry.description
    fields = {field.name for field in dataclasses.fields(entry.options)}
    # The defaults, the toy version and the width the tuner scales are all options of the model.
    model_options(name)
    if entry.toy_options is not None:
        model_options(name, entry.toy_options)
    assert entry.width is None or entry.width.option in fields


def test_unknown_model_error_lists_valid_names():
    with pytest.raises(
        ValueError, match=r"unknown model 'resnet' \(available: cnn, convnext_tiny, densenet, densenet121, "
    ):
        create_model("resnet", 32)


def test_image_too_small_for_the_model():
    with pytest.raises(ValueError, match=r"image_size 16 is too small for model .* \(it needs at least 32\)"):
        create_model("cnn", 16)


def test_unknown_model_option():
    with pytest.raises(ValueError, match="unknown option 'depth' for model 'densenet'"):
        create_model("densenet", 32, options={"depth": 3})


@pytest.mark.parametrize(("stem_stride", "first_block_side"), [(4, 16), (2, 32), (1, 64)])
def test_densenet_stem_stride_sets_the_first_block_s_resolution(stem_stride, first_block_side):
    options = {**get_model_entry("densenet").toy_options, "stem_stride": stem_stride}
    backbone = create_model("densenet", 64, head=TINY_HEAD, options=options).get_layer("backbone")
    assert backbone.get_layer("block1_layer1_concat").output.shape[1:3] == (first_block_side, first_block_side)
    # Three transitions halve it three times.
    assert backbone.output.shape[1:3] == (first_block_side // 8, first_block_side // 8)
    with pytest.raises(ValueError, match="DenseNet stem_stride must be one of 1, 2, 4; got 3"):
        create_model("densenet", 64, options={"stem_stride": 3})


@pytest.mark.parametrize("metadata_features", [0, METADATA_FEATURES], ids=["image", "metadata"])
@pytest.mark.parametrize("name", TOY_MODELS)
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
    unchanged = [
        w.path for w, old in zip(model.trainable_weights, before) if np.array_equal(keras.ops.convert_to_numpy(w), old)
    ]
    assert unchanged == []


@pytest.mark.parametrize("name", ["cnn", "vgg16"])
def test_metadata_changes_the_prediction(name):
    model = tiny_model(name, METADATA_FEATURES)
    (images, features), _ = toy_batch(METADATA_FEATURES)
    a = keras.ops.convert_to_numpy(model((images, features)))
    b = keras.ops.convert_to_numpy(model((images, features + 3.0)))
    assert not np.allclose(a, b)


@pytest.mark.parametrize("name", TOY_MODELS)
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


@pytest.mark.parametrize("name", STATED_PARAMETERS)
def test_default_parameter_counts_are_the_stated_ones(name):
    assert create_model(name, 128).count_params() == get_model_entry(name).parameters
    assert f"{get_model_entry(name).parameters:,}" in (REPO_ROOT / "docs" / "models.md").read_text()


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

    def convs(backbone):
        return [(layer.name, layer.filters) for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]

    assert convs(full) == convs(stock)
    quarter = create_model("vgg16_bn", 32, options={"width": 0.25}).get_layer("backbone")
    assert [filters for _, filters in convs(quarter)] == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in quarter.layers) == 13


def augmentation_batch():
    rng = np.random.default_rng(0)
    # Smooth, skin-coloured images, so that colour statistics are meaningful.
    base = np.array([180.0, 140.0, 150.0], dtype="float32")
    ramp = np.linspace(-30, 30, 32, dtype="float32")[None, :, None, None]
    return np.clip(base + ramp + rng.normal(0, 5, (8, 32, 32, 3)).astype("float32"), 0, 255)


def test_augmentation_is_training_only_and_keeps_colours_on_average():
    options = networks.AugmentationOptions(
        rotation=0.5, zoom=0.2, brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02
    )
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
    augmentation = networks.build_augmentation(
        networks.AugmentationOptions(rand_augment=0.5, rand_augment_ops=2), seed=0
    )
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
        "cnn",
        32,
        head=TINY_HEAD,
        options=get_model_entry("cnn").toy_options,
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

    @registry.register_backbone(
        "plain",
        options=PlainOptions,
        description="two convolutions, for the test",
        width=registry.Width("filters"),
        toy_options={"filters": 4},
        parameters=None,
    )
    def plain_backbone(image_size, options):
        image = keras.Input((image_size, image_size, 3))
        x = layers.Rescaling(1 / 255)(image)
        x = layers.Conv2D(options.filters, 3, strides=2, padding="same", activation="relu", name="block1_conv")(x)
        x = layers.Conv2D(options.filters, 3, strides=2, padding="same", activation="relu", name="block2_conv")(x)
        return keras.Model(image, x)  # unnamed: create_model names it "backbone"

    return "plain"


def test_a_model_registered_elsewhere_builds_trains_saves_loads_and_explains(plain_model, toy_dir, tmp_path):
    assert plain_model in list_models()
    model = tiny_model(plain_model, METADATA_FEATURES)
    assert model.name == "plain_meta" and model.get_layer("backbone").output.shape[1:] == (8, 8, 4)
    assert get_model_entry(plain_model).width.scaled(model_options(plain_model), 1.5) == {"filters": 12}

    assert (
        run_main("--model", plain_model, "--config", TINY_CONFIG, "--data-dir", toy_dir, "--output-dir", tmp_path) == 0
    )
    (run_dir,) = (tmp_path / "runs").iterdir()
    loaded = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert (
        loaded.name == plain_model
        and loaded.get_layer("backbone").get_layer("block2_conv").filters == PlainOptions.filters
    )
    assert len(pd.read_csv(run_dir / "predictions.csv")) > 0
    # Grad-CAM finds the backbone's last feature map by itself: 8x8 at 32 px, brought back to 32x32.
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    metadata = [np.zeros((2, tensor.shape[-1]), "float32") for tensor in loaded.inputs if len(tensor.shape) == 2]
    heatmaps = GradCAM(loaded).heatmaps(images, [0, 4], metadata)
    assert heatmaps.shape == (2, 32, 32) and np.isfinite(heatmaps).all() and heatmaps.max() <= 1


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
