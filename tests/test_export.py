"""`main.py export`: each format's file matches the Keras model, a metadata model and a fold ensemble
export as one graph, int8 calibrates on training images only, a failed check leaves nothing, and
`predict` and `serve` take an export folder (a damaged one is a one-line error)."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_CONFIG, run_main

pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")
pytest.importorskip("ai_edge_litert", reason="the export extra is not installed: pip install -e '.[export]'")

import keras  # noqa: E402

from dataset.features import MetadataEncoder  # noqa: E402
from dataset.metadata import CLASS_NAMES  # noqa: E402
from dataset.split import fold_subsets, load_split  # noqa: E402
from evaluation.predictor import Predictor  # noqa: E402
from inference.export import export_model, metadata_encoding, without_training_layers  # noqa: E402
from inference.exported import EXPORT_FILENAME, ExportedModel, encode_metadata  # noqa: E402
from pipeline import run_experiment  # noqa: E402
from training import prepare_run_data  # noqa: E402
from training.run import run_config  # noqa: E402

pytestmark = pytest.mark.xdist_group("export")


@pytest.fixture(scope="module")
def folds(toy_dir, tmp_path_factory):
    """A 2-fold study of the toy densenet with the metadata head, trained with augmentation (and dropout):
    what the exported graph must leave out."""
    output = tmp_path_factory.mktemp("export_study")
    settings = {
        "data_dir": str(toy_dir),
        "output_dir": str(output),
        "metadata": True,
        "augmentation": {"rotation": 0.5, "zoom": 0.1, "hue": 0.05, "rand_augment": 0.2},
    }
    study_dir = run_experiment("densenet", TINY_CONFIG, settings, folds=2)
    runs = sorted((output / "runs").iterdir())
    return study_dir, runs


def test_metadata_encoding_is_the_run_encoders_by_hand():
    # A fold's encoder: age mean 50, std 10, knows female/male and back; the export's categories add "face".
    encoder = MetadataEncoder(50.0, 10.0, ("female", "male", "unknown"), ("back", "unknown"))
    sexes, sites = ("female", "male", "unknown"), ("back", "face", "unknown")
    rows = pd.DataFrame({"age": [60.0, np.nan], "sex": ["male", "unknown"], "localization": ["face", "back"]})
    raw = encode_metadata(rows, sexes, sites)
    np.testing.assert_array_equal(raw, [[60, 0, 0, 1, 0, 0, 1, 0], [0, 1, 0, 0, 1, 1, 0, 0]])
    encoded = np.asarray(metadata_encoding(encoder, sexes, sites, "encoding")(raw))
    # Age 60 -> (60 - 50) / 10 = 1; an unknown age -> 0 and its flag; "face" is unknown to this encoder.
    np.testing.assert_allclose(encoded, [[1, 0, 0, 1, 0, 0, 1], [0, 1, 0, 0, 1, 1, 0]], atol=1e-6)
    np.testing.assert_allclose(encoded, encoder.transform(rows), atol=1e-6)


def test_the_inference_graph_has_no_augmentation_or_dropout(folds):
    _, runs = folds
    model = Predictor.load(runs[0]).members[0].model
    trained = {layer.name for layer in model._flatten_layers()}
    assert "augmentation" in trained and any(
        isinstance(layer, keras.layers.Dropout) for layer in model._flatten_layers()
    )
    inference = without_training_layers(model, "model_0")
    layers = list(inference._flatten_layers())
    assert not any(layer.name == "augmentation" or isinstance(layer, keras.layers.Dropout) for layer in layers)
    # The same layers, so the same weights.
    assert {id(layer.kernel) for layer in layers if isinstance(layer, keras.layers.Dense)} <= {
        id(layer.kernel) for layer in model._flatten_layers() if isinstance(layer, keras.layers.Dense)
    }


def keras_and_export_on_test_images(predictor_path, export_dir):
    """(Keras probabilities, the export's) on the run's test images, each with its own metadata."""
    predictor = Predictor.load(predictor_path)
    data = prepare_run_data(run_config(predictor.members[0].run_dir), verbose=False)
    rows, cache_rows, _ = data.subset("test")
    images = np.asarray(data.cache.images[cache_rows])
    exported = ExportedModel.load(export_dir)
    return predictor.predict(images, rows), exported.predict(images, rows)


@pytest.mark.parametrize("format", ["onnx", "litert", "saved_model", "openvino"])
def test_each_format_of_a_metadata_run_matches_keras(folds, format, tmp_path):
    _, runs = folds
    if format == "openvino":
        pytest.importorskip("openvino")
    folder = export_model(runs[0], format, output=tmp_path / format, verbose=False)
    info = json.loads((folder / EXPORT_FILENAME).read_text())
    assert info["format"] == format and info["source"]["runs"] == [str(runs[0])]
    assert [entry["name"] for entry in info["inputs"]] == ["image", "metadata"]
    assert info["inputs"][1]["features"][:2] == ["age", "age_missing"] and info["metadata"]["sites"][-1] == "unknown"
    assert [entry["code"] for entry in info["classes"]] == list(CLASS_NAMES)
    check = info["check"]
    assert check["class_agreement"] >= 0.999 and check["max_abs_difference"] < 1e-3
    assert check["balanced_accuracy"]["export"] == pytest.approx(check["balanced_accuracy"]["keras"], abs=5e-4)
    assert check["file_bytes"] > 0 and check["latency_ms"]["export"]["single_image_p50"] > 0
    keras_probabilities, export_probabilities = keras_and_export_on_test_images(runs[0], folder)
    np.testing.assert_allclose(export_probabilities, keras_probabilities, atol=1e-3)


def test_a_fold_ensemble_is_one_graph_averaging_its_folds(folds, tmp_path):
    study_dir, runs = folds
    folder = export_model(study_dir / "densenet-meta", "onnx", output=tmp_path / "ensemble", verbose=False)
    info = json.loads((folder / EXPORT_FILENAME).read_text())
    assert info["source"]["runs"] == [str(run) for run in runs] and info["source"]["configuration"] == "densenet-meta"
    keras_probabilities, export_probabilities = keras_and_export_on_test_images(study_dir / "densenet-meta", folder)
    np.testing.assert_allclose(export_probabilities, keras_probabilities, atol=1e-5)
    # The mean of the two folds, not either alone.
    single = [keras_and_export_on_test_images(run, folder)[0] for run in runs]
    np.testing.assert_allclose(export_probabilities, np.mean(single, axis=0), atol=1e-5)
    assert np.abs(single[0] - single[1]).max() > 1e-3


def test_int8_calibrates_on_training_images_only_and_is_smaller(folds, tmp_path):
    _, runs = folds
    float_folder = export_model(runs[0], "litert", output=tmp_path / "float", verbose=False)
    folder = export_model(
        runs[0], "litert", quantize="int8", output=tmp_path / "int8", calibration_images=20, verbose=False
    )
    info = json.loads((folder / EXPORT_FILENAME).read_text())
    split = fold_subsets(load_split(runs[0] / "split.csv"), run_config(runs[0]).fold)
    subsets = dict(zip(split["image_id"], split["subset"]))
    calibration = info["calibration"]["image_ids"]
    assert len(calibration) == 20 and {subsets[image_id] for image_id in calibration} == {"train"}
    assert info["check"]["file_bytes"] < json.loads((float_folder / EXPORT_FILENAME).read_text())["check"]["file_bytes"]


def test_a_failed_check_is_one_line_and_leaves_nothing(folds, tmp_path, monkeypatch, capsys):
    _, runs = folds
    # Agreement above 100% cannot be met: the refusal path, with a real export behind it.
    monkeypatch.setattr("inference.export.MIN_AGREEMENT", 1.01)
    assert run_main("export", runs[0], "--format", "onnx", "--output", tmp_path / "refused") == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "agrees with the Keras model on 100.00%" in error and "\n" not in error
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_or_a_quantisation_the_format_has_not_is_refused(folds, tmp_path, capsys):
    _, runs = folds
    (tmp_path / "taken").mkdir()
    assert run_main("export", runs[0], "--format", "onnx", "--output", tmp_path / "taken") == 2
    assert "already exists" in capsys.readouterr().err
    assert run_main("export", runs[0], "--format", "onnx", "--quantize", "int8") == 2
    assert "onnx exports are not quantised here" in capsys.readouterr().err


@pytest.fixture(scope="module")
def onnx_export(folds, tmp_path_factory):
    _, runs = folds
    return export_model(runs[0], "onnx", output=tmp_path_factory.mktemp("served") / "onnx", verbose=False)


def test_predict_takes_an_export_folder(onnx_export, folds, toy_dir, capsys):
    _, runs = folds
    images = sorted((toy_dir / "images").iterdir())[:4]
    assert run_main("predict", runs[0], *images) == 0
    from_keras = capsys.readouterr().out
    assert run_main("predict", onnx_export, *images) == 0
    from_onnx = capsys.readouterr().out
    assert from_onnx == from_keras  # the same classes, and probabilities to 4 decimals


def test_serve_answers_from_an_export_with_the_same_api(onnx_export, folds, toy_dir):
    from fastapi.testclient import TestClient

    from inference.app import create_app

    _, runs = folds
    image = next((toy_dir / "images").iterdir()).read_bytes()
    form = {"age": "55", "sex": "male", "site": "back", "explain": "true"}
    answers = []
    for folder, engine in ((runs[0], "keras"), (onnx_export, "onnx")):
        client = TestClient(create_app(folder, engine=engine))
        answer = client.post("/predict", files={"image": ("x.jpg", image, "image/jpeg")}, data=form).json()
        answers.append(answer)
        assert client.get("/model").json()["metadata"] is True
    keras_answer, onnx_answer = answers
    assert onnx_answer["predicted"]["code"] == keras_answer["predicted"]["code"]
    for name in CLASS_NAMES:
        assert onnx_answer["probabilities"][name] == pytest.approx(keras_answer["probabilities"][name], abs=1e-5)
    assert "gradcam_png" not in onnx_answer and any("Grad-CAM" in note for note in onnx_answer["warnings"])


def test_a_damaged_export_is_one_line_in_predict_and_serve(onnx_export, toy_dir, tmp_path, capsys):
    import shutil

    damaged = shutil.copytree(onnx_export, tmp_path / "damaged")
    model = damaged / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    image = next((toy_dir / "images").iterdir())
    assert run_main("predict", damaged, image) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {model}: damaged, onnxruntime cannot load it") and "\n" not in error
    assert run_main("serve", damaged, "--port", "0") == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {model}: damaged") and "\n" not in error
    assert run_main("serve", onnx_export, "--engine", "litert", "--port", "0") == 2
    assert "holds the onnx export, not litert" in capsys.readouterr().err


def test_serving_an_export_imports_no_keras_tensorflow_or_jax(onnx_export, toy_dir):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    image = next((toy_dir / "images").iterdir())
    script = f"""
import sys
from fastapi.testclient import TestClient
from inference.app import create_app
client = TestClient(create_app({str(onnx_export)!r}, engine="onnx"))
answer = client.post("/predict", files={{"image": ("x.jpg", open({str(image)!r}, "rb").read(), "image/jpeg")}}).json()
assert set(answer["probabilities"]) == {set(CLASS_NAMES)!r}, answer
print(sorted(name for name in ("keras", "tensorflow", "jax") if name in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
