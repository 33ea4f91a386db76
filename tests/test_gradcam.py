"""Grad-CAM: heat maps of every registered architecture, and on a toy task they find the evidence."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import REPO_ROOT

from inference.gradcam import GradCAM, overlay_heatmap
from networks.heads import HeadOptions
from networks.registry import create_model, get_model_entry, model_options

SIZE = 32


def tiny_model(name, metadata_features=0):
    options = model_options(name, get_model_entry(name).toy_options)
    weights = {"weights": None} if name == "vgg16" else {}
    return create_model(
        name, SIZE, metadata_features=metadata_features, head=HeadOptions(dense_units=(16,)), options=options, **weights
    )


@pytest.mark.parametrize("metadata_features", [0, 5])
@pytest.mark.parametrize("name", ["cnn", "densenet", "vgg16", "vgg16_bn", "efficientnet_lite0"])
def test_every_architecture_gets_a_finite_heatmap_of_the_input_size(name, metadata_features):
    model = tiny_model(name, metadata_features)
    images = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    others = [np.zeros((2, metadata_features), "float32")] if metadata_features else []
    heatmaps = GradCAM(model).heatmaps(images, [0, 4], others)
    assert heatmaps.shape == (2, SIZE, SIZE)
    assert np.isfinite(heatmaps).all() and heatmaps.min() >= 0 and heatmaps.max() <= 1
    # The explained map is at least 4x4 (the final maps at 32 px are 1x1 or 2x2).
    assert GradCAM(model).to_features.output.shape[1:3] == (4, 4)


def patch_images(rng, count, with_patch):
    """Dim noise; where `with_patch`, a bright 8x8 square at a random place decides the class."""
    images = rng.uniform(0, 60, (count, SIZE, SIZE, 3)).astype("float32")
    corners = rng.integers(0, SIZE - 8, (count, 2))
    for image, (row, column), patch in zip(images, corners, with_patch):
        if patch:
            image[row : row + 8, column : column + 8] = 255
    return images, corners


@pytest.fixture(scope="module")
def patch_model():
    """A small CNN trained in seconds to tell images with a bright patch (class 1) from without (0)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 512)
    images, _ = patch_images(rng, len(labels), labels == 1)
    model = create_model(
        "cnn",
        SIZE,
        head=HeadOptions(dense_units=(16,), dropout=0.0),
        options=model_options("cnn", {"filters": (8, 16), "convs_per_block": 1}),
    )
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images, labels, batch_size=32, epochs=4, verbose=0)
    return model


def test_heat_peaks_on_the_patch_that_decides_the_class_and_follows_it(patch_model):
    rng = np.random.default_rng(1)
    images, corners = patch_images(rng, 6, [True] * 6)
    assert (patch_model.predict(images, verbose=0).argmax(axis=1) == 1).all()
    heatmaps = GradCAM(patch_model).heatmaps(images, [1] * len(images))
    assert np.isfinite(heatmaps).all()
    for heatmap, (row, column) in zip(heatmaps, corners):
        assert heatmap.std() > 0.05
        peak_row, peak_column = np.unravel_index(heatmap.argmax(), heatmap.shape)
        # The peak lies on the patch, give or take the 4-pixel cells of the 8x8 feature map.
        assert row - 4 <= peak_row < row + 12 and column - 4 <= peak_column < column + 12
        on_patch = np.zeros(heatmap.shape, bool)
        on_patch[row : row + 8, column : column + 8] = True
        assert heatmap[on_patch].mean() > 2 * heatmap[~on_patch].mean()


def test_overlay_has_the_image_size_even_when_larger_than_the_heatmap():
    image = np.zeros((50, 70, 3), np.uint8)
    heatmap = np.zeros((SIZE, SIZE), np.float32)
    heatmap[:16, :16] = 1
    overlay = overlay_heatmap(image, heatmap)
    assert overlay.shape == (50, 70, 3) and overlay.dtype == np.uint8
    # Hot (red) in the top-left quarter, cold (blue) in the bottom-right.
    assert overlay[5, 5, 0] > overlay[5, 5, 2] and overlay[45, 65, 2] > overlay[45, 65, 0]


JAX_HEATMAPS = """
import sys
import keras
import numpy as np
from inference.gradcam import GradCAM
model = keras.saving.load_model(sys.argv[1], compile=False)
inputs = np.load(sys.argv[2])
heatmaps = GradCAM(model).heatmaps(inputs["images"], inputs["classes"], [inputs["metadata"]])
np.save(sys.argv[3], heatmaps)
"""


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="compares the TensorFlow path with the JAX path")
def test_jax_backend_gives_the_same_heatmaps(tmp_path):
    pytest.importorskip("jax", reason="JAX is not installed")
    model = tiny_model("cnn", metadata_features=5)
    model.save(tmp_path / "model.keras")
    rng = np.random.default_rng(0)
    inputs = {
        "images": rng.uniform(0, 255, (7, SIZE, SIZE, 3)).astype("float32"),
        "classes": np.arange(7),
        "metadata": rng.uniform(0, 1, (7, 5)).astype("float32"),
    }
    np.savez(tmp_path / "inputs.npz", **inputs)
    expected = GradCAM(model).heatmaps(inputs["images"], inputs["classes"], [inputs["metadata"]])
    environment = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run(
        [sys.executable, "-c", JAX_HEATMAPS, tmp_path / "model.keras", tmp_path / "inputs.npz", tmp_path / "jax.npy"],
        env=environment,
        check=True,
        capture_output=True,
    )
    assert expected.max() > 0
    np.testing.assert_allclose(np.load(tmp_path / "jax.npy"), expected, atol=1e-4)
