"""What depends on the Keras backend: what a run records about it, and models crossing backends.

CI runs every test marked `backend` a second time under JAX (`KERAS_BACKEND=jax pytest -m backend`).
The cross-backend test starts its own processes, one per backend, so it runs in the main suite only.

Run as a script, this file is that test's helper process:
    KERAS_BACKEND=jax python tests/test_backends.py save FOLDER      # a trained toy model and its predictions
    KERAS_BACKEND=tensorflow python tests/test_backends.py predict FOLDER
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # when run as a script

from conftest import REPO_ROOT, TINY_CONFIG, run_main  # noqa: E402

from common.run_folder import MODEL_FILENAME  # noqa: E402
from dataset.metadata import CLASS_NAMES  # noqa: E402
from evaluation.predictor import load_run_model  # noqa: E402
from networks import AugmentationOptions, build_augmentation, create_model  # noqa: E402
from training import TrainConfig  # noqa: E402
from training.devices import compute_device  # noqa: E402
from training.trainer import compile_model  # noqa: E402

BACKENDS = ("tensorflow", "jax")
METADATA_FEATURES = 20


def expected_jit_compile(backend, device_kind):
    """Keras's "auto": JAX always compiles; TensorFlow only off the CPU, where XLA pays; PyTorch never."""
    return backend == "jax" or (backend == "tensorflow" and device_kind != "cpu")


@pytest.mark.backend
def test_runs_record_the_backend_the_device_and_what_auto_chose(study):
    backend, device = keras.backend.backend(), compute_device()
    for run in (study / "runs").iterdir():
        environment = json.loads((run / "environment.json").read_text())
        assert environment["backend"] == backend
        assert environment["device"] == device and device["name"]
        training = json.loads((run / "training.json").read_text())
        assert training["precision"] == ("mixed_float16" if device["kind"] == "gpu" else "float32")
        assert training["jit_compile"] == expected_jit_compile(backend, device["kind"])


@pytest.mark.backend
def test_augmentation_layers_leave_jit_compilation_to_the_backend(tmp_path):
    # Keras marks its geometric layers unfit for XLA (TensorFlow's transform has none); under JAX
    # that would switch jit off for the whole model and run each step op by op, ten times slower.
    # The mark is not saved, so a resumed checkpoint and a kept model are checked too.
    options = AugmentationOptions(
        rotation=0.5, zoom=0.2, aspect=0.25, brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02
    )
    model = create_model(
        "cnn", 32, options={"filters": [4, 4, 4, 4, 4]}, augmentation=build_augmentation(options, seed=0)
    )
    config, weights = TrainConfig(), {index: 1.0 for index in range(len(CLASS_NAMES))}
    expected = expected_jit_compile(keras.backend.backend(), compute_device()["kind"])
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    labels = np.eye(len(CLASS_NAMES))[:4]

    compile_model(model, config, 1e-3, weights)
    assert np.isfinite(model.train_on_batch(images, labels)[0])
    assert model.jit_compile == expected
    model.save(tmp_path / MODEL_FILENAME)

    resumed = keras.saving.load_model(tmp_path / MODEL_FILENAME)  # as a resumed run loads its checkpoint
    compile_model(resumed, config, 1e-3, weights)
    assert resumed.jit_compile == expected
    assert load_run_model(tmp_path).jit_compile == expected


@pytest.mark.backend
def test_evaluate_a_trained_run_on_an_external_image_set(study, real_toy_dir, tmp_path):
    # The hybrid run: its model, custom loss and metric, and its metadata encoder all load back.
    run_dir = next(run for run in (study / "runs").iterdir() if run.name.endswith("vgg16-meta"))
    assert run_main("evaluate", run_dir, "--data-dir", real_toy_dir, "--output", tmp_path / "external") == 0
    predictions = pd.read_csv(tmp_path / "external" / "predictions.csv")
    assert len(predictions) == len(list((real_toy_dir / "images").glob("*.jpg")))
    assert np.allclose(predictions.filter(like="prob_").sum(axis=1), 1.0, atol=1e-4)
    assert (tmp_path / "external" / "report.md").is_file()


@pytest.mark.skipif(
    not all(importlib.util.find_spec(backend) for backend in BACKENDS),
    reason="needs TensorFlow and JAX installed: pip install -e '.[jax]'",
)
@pytest.mark.parametrize(("saved_under", "loaded_under"), [("tensorflow", "jax"), ("jax", "tensorflow")])
def test_a_model_saved_under_one_backend_predicts_the_same_under_another(saved_under, loaded_under, tmp_path):
    helper(saved_under, "save", tmp_path)
    helper(loaded_under, "predict", tmp_path)
    expected = np.load(tmp_path / "saved.npz")["probabilities"]
    actual = np.load(tmp_path / "loaded.npy")
    assert expected.shape == (8, 7)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6)


def helper(backend, command, folder):
    environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, __file__, command, str(folder)], env=environment, cwd=REPO_ROOT, check=True)


def save_trained_model(folder):
    """A toy hybrid DenseNet, compiled and trained a step as a run's is, saved with its predictions."""
    from training import load_config
    from training.trainer import build_model, compile_model

    config = load_config("densenet", TINY_CONFIG, {"metadata": True})
    model = build_model(config, METADATA_FEATURES)
    compile_model(model, config, config.lr, {index: 1.0 for index in range(7)})
    rng = np.random.default_rng(0)
    inputs = (
        rng.uniform(0, 255, (8, config.image_size, config.image_size, 3)).astype("float32"),
        rng.normal(size=(8, METADATA_FEATURES)).astype("float32"),
    )
    # One step, so that the batch-norm statistics and the optimizer state are not their initial values.
    model.train_on_batch(inputs, keras.utils.to_categorical(np.arange(8) % 7, 7))
    model.save(folder / "model.keras")
    np.savez(folder / "saved.npz", images=inputs[0], metadata=inputs[1], probabilities=model.predict(inputs, verbose=0))


def predict_with_saved_model(folder):
    saved = np.load(folder / "saved.npz")
    model = keras.saving.load_model(folder / "model.keras")  # compiled, as --resume loads a checkpoint
    np.save(folder / "loaded.npy", model.predict((saved["images"], saved["metadata"]), verbose=0))


if __name__ == "__main__":
    command, folder = sys.argv[1], Path(sys.argv[2])
    {"save": save_trained_model, "predict": predict_with_saved_model}[command](folder)
