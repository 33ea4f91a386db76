"""External test sets: the two label formats, and a tiny model evaluated end to end."""

import json
import re

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from common.errors import DataError
from common.files import new_folder
from dataset.augment import DIHEDRAL_TRANSFORMS
from dataset.features import MetadataEncoder
from dataset.images import read_image
from evaluation import evaluate_external, predictions_frame, read_labels, write_predictions
from evaluation.calibration import fit_temperature

IMAGE_IDS = [f"ISIC_{index:07d}" for index in range(8)]
CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc", "mel"]
HAM_LABELS = "image_id,dx,age,sex,localization\n" + "".join(
    f"{image_id},{dx},{40 + index if index % 3 else ''},{'male' if index % 2 else 'female'},{'back' if index < 4 else ''}\n"
    for index, (image_id, dx) in enumerate(zip(IMAGE_IDS, CLASSES))
)
ISIC_COLUMNS = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
ISIC_LABELS = (
    "image,"
    + ",".join(ISIC_COLUMNS)
    + "\n"
    + "".join(
        image_id + "," + ",".join("1.0" if column.lower() == dx else "0.0" for column in ISIC_COLUMNS) + "\n"
        for image_id, dx in zip(IMAGE_IDS, CLASSES)
    )
)


def write_file(path, text):
    path.write_text(text)
    return path


# === Labels ===


def test_both_label_formats_give_the_same_labels(tmp_path):
    ham = read_labels(write_file(tmp_path / "ham.csv", HAM_LABELS))
    isic = read_labels(write_file(tmp_path / "isic.csv", ISIC_LABELS))
    columns = ["image_id", "lesion_id", "dx"]
    pd.testing.assert_frame_equal(ham[columns], isic[columns])
    assert list(isic["dx"]) == CLASSES
    assert list(isic["lesion_id"]) == IMAGE_IDS  # no lesion ids: each image is its own lesion
    assert list(ham.columns) == ["image_id", "lesion_id", "dx", "age", "sex", "localization"]
    assert isic["age"].isna().all() and (isic["sex"] == "unknown").all()
    assert np.isnan(ham.at[0, "age"]) and ham.at[1, "age"] == 41 and ham.at[5, "localization"] == "unknown"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            HAM_LABELS.replace(",bcc,", ",carcinoma,"),
            r"labels\.csv, line 3: unknown dx 'carcinoma' \(expected one of akiec, ",
        ),
        (
            ISIC_LABELS.replace("ISIC_0000002,0.0", "ISIC_0000002,1.0"),
            r"labels\.csv, line 4: expected exactly one 1 and otherwise 0 among the class columns; got MEL=1\.0, ",
        ),
        (
            ISIC_LABELS.replace("ISIC_0000000,0.0", "ISIC_0000000,yes"),
            r"labels\.csv, line 2: expected exactly one 1 .*MEL=yes",
        ),
        (
            "filename,diagnosis\na.jpg,mel\n",
            r"labels\.csv: header \(filename, diagnosis\) is neither HAM10000 metadata \(image_id, dx, .*\) "
            r"nor ISIC 2018 ground truth \(image, MEL, ",
        ),
    ],
    ids=["unknown_class", "two_classes", "not_a_number", "wrong_header"],
)
def test_bad_labels_give_a_one_line_error(tmp_path, text, message):
    with pytest.raises(DataError, match=message) as error:
        read_labels(write_file(tmp_path / "labels.csv", text))
    assert "\n" not in str(error.value)


# === End to end ===


def write_images(folder, image_ids, seed=0):
    """Tiny JPEGs of random colours, not square: the decoder brings them to the model's size."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for image_id in image_ids:
        pixels = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{image_id}.jpg")


def tiny_model(metadata_features=0):
    """The smallest classifier shaped like the project's: an "image" input, optionally "metadata"."""
    image = keras.Input((32, 32, 3), name="image")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(image))
    if not metadata_features:
        return keras.Model(image, keras.layers.Dense(7, activation="softmax")(features))
    metadata = keras.Input((metadata_features,), name="metadata")
    joined = keras.layers.Concatenate()([features, metadata])
    return keras.Model([image, metadata], keras.layers.Dense(7, activation="softmax")(joined))


@pytest.fixture
def external_case(tmp_path):
    """A run folder with an image-only model, and a data folder with 8 loose images and HAM labels."""
    run_dir = tmp_path / "runs" / "20250101-120000-cnn"
    run_dir.mkdir(parents=True)
    tiny_model().save(run_dir / "model.keras")
    data_dir = tmp_path / "clinic"
    write_images(data_dir, IMAGE_IDS)
    write_file(data_dir / "HAM10000_metadata.csv", HAM_LABELS)
    return run_dir, data_dir


@pytest.mark.backend
def test_evaluate_external_writes_predictions_and_reports(external_case, tmp_path):
    run_dir, data_dir = external_case
    metrics = evaluate_external(run_dir, data_dir, cache_dir=tmp_path / "cache", bootstrap_draws=50, verbose=False)

    output_dir = run_dir / "external" / "clinic"
    predictions = pd.read_csv(output_dir / "predictions.csv")
    assert sorted(predictions["image_id"]) == IMAGE_IDS
    assert list(predictions["dx"]) == CLASSES
    # The images reach the model through the training decoder: resized whole to 32 x 32.
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    images = np.stack([read_image(data_dir / f"{image_id}.jpg", 32) for image_id in predictions["image_id"]])
    expected = model.predict(images.astype(np.float32), verbose=0)
    np.testing.assert_allclose(predictions.filter(like="prob_").to_numpy(), expected, rtol=1e-5, atol=1e-6)

    assert json.loads((output_dir / "metrics.json").read_text()) == metrics
    assert metrics["n_images"] == 8
    report = (output_dir / "report.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", report)
    assert "roc_curves.png" in targets and all((output_dir / target).is_file() for target in targets)
    assert not (output_dir / "training_curves.png").exists()


@pytest.mark.backend
def test_evaluate_external_feeds_metadata_through_the_run_encoder(tmp_path):
    run_dir = tmp_path / "run-meta"
    run_dir.mkdir()
    data_dir = tmp_path / "isic"
    write_images(data_dir / "images", IMAGE_IDS)
    labels = read_labels(write_file(data_dir / "HAM10000_metadata.csv", HAM_LABELS))
    encoder = MetadataEncoder.fit(labels)
    encoder.save(run_dir / "metadata_encoder.json")
    tiny_model(metadata_features=encoder.size).save(run_dir / "model.keras")

    output_dir = tmp_path / "out"
    evaluate_external(
        run_dir, data_dir, output_dir=output_dir, cache_dir=tmp_path / "cache", bootstrap_draws=50, verbose=False
    )
    assert sorted(pd.read_csv(output_dir / "predictions.csv")["image_id"]) == IMAGE_IDS


def test_evaluate_external_reports_a_missing_image(external_case, tmp_path):
    run_dir, data_dir = external_case
    (data_dir / "ISIC_0000003.jpg").unlink()
    message = r"^1 of 8 images not found in .*clinic: ISIC_0000003 \(to leave them out: --set drop_missing_images=true, evaluate: --drop-missing-images\)$"
    with pytest.raises(DataError, match=message):
        evaluate_external(run_dir, data_dir, cache_dir=tmp_path / "cache", verbose=False)
    assert not (run_dir / "external").exists()


def test_evaluate_external_without_labels_file_says_what_to_pass(external_case, tmp_path):
    run_dir, data_dir = external_case
    (data_dir / "HAM10000_metadata.csv").unlink()
    with pytest.raises(DataError, match=r"clinic has no HAM10000_metadata\.csv: pass its labels file"):
        evaluate_external(run_dir, data_dir, cache_dir=tmp_path / "cache", verbose=False)


def test_new_folder_never_reuses_an_existing_one(tmp_path):
    first = new_folder(tmp_path / "external" / "clinic")
    second = new_folder(tmp_path / "external" / "clinic")
    assert (first.name, second.name) == ("clinic", "clinic-2")
    assert first.is_dir() and second.is_dir()


def test_external_tta_is_the_mean_of_the_eight_views_beside_the_plain_evaluation(tmp_path):
    run_dir = tmp_path / "runs" / "20250101-120000-cnn"
    run_dir.mkdir(parents=True)
    keras.utils.set_random_seed(0)
    # Flattened pixels, not pooled ones: the prediction changes when the image turns.
    image = keras.Input((32, 32, 3), name="image")
    flat = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(image))
    keras.Model(image, keras.layers.Dense(7, activation="softmax")(flat)).save(run_dir / "model.keras")
    data_dir = tmp_path / "clinic"
    write_images(data_dir, IMAGE_IDS)
    write_file(data_dir / "HAM10000_metadata.csv", HAM_LABELS)

    metrics = evaluate_external(
        run_dir, data_dir, cache_dir=tmp_path / "cache", bootstrap_draws=50, verbose=False, tta=True
    )
    output_dir = run_dir / "external" / "clinic"
    plain = pd.read_csv(output_dir / "predictions.csv").filter(like="prob_").to_numpy()
    tta = pd.read_csv(output_dir / "tta" / "predictions.csv")
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    images = np.stack([read_image(data_dir / f"{image_id}.jpg", 32) for image_id in tta["image_id"]]).astype(np.float32)
    views = [model.predict(np.ascontiguousarray(transform(images)), verbose=0) for transform in DIHEDRAL_TRANSFORMS]
    np.testing.assert_allclose(tta.filter(like="prob_").to_numpy(), np.mean(views, axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(tta.filter(like="prob_").to_numpy(), plain)
    assert json.loads((output_dir / "tta" / "metrics.json").read_text()) == metrics["tta"]
    assert (output_dir / "tta" / "report.md").is_file() and (output_dir / "report.md").is_file()


def test_external_clinical_sections_use_the_runs_calibration_and_the_labels_metadata(external_case, tmp_path):
    run_dir, data_dir = external_case
    # The run's validation predictions: what its temperature, thresholds and operating points are fitted on.
    rng = np.random.default_rng(0)
    val_y = np.arange(40) % 7
    val_probabilities = rng.dirichlet(np.ones(7), 40)
    write_predictions(
        run_dir / "val_predictions.csv",
        predictions_frame([f"V{index}" for index in range(40)], val_y, val_probabilities),
    )
    metrics = evaluate_external(run_dir, data_dir, cache_dir=tmp_path / "cache", bootstrap_draws=20, verbose=False)
    clinical = metrics["clinical"]
    assert clinical["calibration"]["temperature"] == pytest.approx(fit_temperature(val_y, val_probabilities))
    assert (
        json.loads((run_dir / "calibration.json").read_text())["temperature"] == clinical["calibration"]["temperature"]
    )
    assert {"operating_points", "conformal"} <= set(clinical)
    # HAM10000_LABELS: sexes alternate; ages 40 + index except every third (unknown); "back" for the first four.
    counts = {
        attribute: {group: entry["n_images"] for group, entry in result["groups"].items()}
        for attribute, result in clinical["subgroups"].items()
    }
    assert counts == {
        "sex": {"female": 4, "male": 4},
        "age": {"30–49": 5, "unknown": 3},
        "site": {"trunk": 4, "other/unknown": 4},
    }
    report = (run_dir / "external" / "clinic" / "report.md").read_text()
    for section in (
        "## Calibration",
        "## Operating points",
        "## Selective prediction and conformal sets",
        "## Subgroups",
    ):
        assert section in report
    assert (run_dir / "external" / "clinic" / "calibrated_predictions.csv").is_file()

    # ISIC ground truth has no age, sex or site: no subgroups.
    isic = write_file(tmp_path / "isic.csv", ISIC_LABELS)
    metrics = evaluate_external(
        run_dir, data_dir, labels_path=isic, cache_dir=tmp_path / "cache", bootstrap_draws=20, verbose=False
    )
    assert "subgroups" not in metrics["clinical"] and "temperature" in metrics["clinical"]["calibration"]
    assert "## Subgroups" not in (run_dir / "external" / "clinic-2" / "report.md").read_text()
