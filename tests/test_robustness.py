"""Results that hold in other clinics (issue 40): the corruptions, the robustness benchmark,
corruption augmentation, grey world, test-time resolution and ensembles of configurations."""

import json

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_CONFIG, run_main

from common.errors import ConfigError, DataError
from dataset import prepare_data, training_sequence
from dataset.corruptions import CORRUPTIONS, SEVERITIES, CorruptionAugmentation, corrupt, corrupt_images, image_keys
from evaluation import Predictor
from evaluation.configuration_ensemble import choose_ensemble, resolve_configurations
from evaluation.robustness import balanced_accuracy, pool_predictions, score_robustness
from networks.colour import ShadesOfGrey
from networks.resolution import with_image_size
from training import load_config


def colourful(size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


# === The corruptions ===


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_zero_leaves_the_image_as_it_is_and_each_severity_changes_it(name):
    image = colourful()
    np.testing.assert_array_equal(corrupt(image, name, 0, np.random.default_rng(0)), image)
    for severity in SEVERITIES:
        corrupted = corrupt(image, name, severity, np.random.default_rng(0))
        assert corrupted.shape == image.shape and corrupted.dtype == np.uint8
        assert not np.array_equal(corrupted, image), f"{name} at severity {severity} changed nothing"


def test_colour_corruptions_give_the_hand_computed_values():
    grey = np.full((4, 4, 3), 100, dtype=np.uint8)
    # Exposure 1 +/- 0.15 of 100; a warm or cool cast of +/- 0.16 on red and blue, green kept.
    assert corrupt(grey, "brightness", 1, np.random.default_rng(0))[0, 0, 0] in (85, 115)
    assert tuple(corrupt(grey, "colour_temperature", 2, np.random.default_rng(0))[0, 0]) in (
        (116, 100, 84),
        (84, 100, 116),
    )
    # Gamma 2 or 1/2 of 64: 255 (64/255)^2 = 16.06, 255 (64/255)^0.5 = 127.75.
    assert corrupt(np.full((2, 2, 3), 64, dtype=np.uint8), "gamma", 3, np.random.default_rng(0))[0, 0, 0] in (16, 128)
    # Contrast 0.75 of the distance to the mean (100): 0 -> 25, 200 -> 175.
    halves = np.zeros((2, 2, 3), dtype=np.uint8)
    halves[1] = 200
    np.testing.assert_array_equal(corrupt(halves, "contrast", 1, None)[:, 0, 0], [25, 175])
    # A grey image has no colour to take away or add.
    np.testing.assert_array_equal(corrupt(grey, "saturation", 3, np.random.default_rng(0)), grey)


def test_geometric_corruptions_give_the_hand_computed_values():
    # The 4:3 frame squashed to a square: its central square is the central 3/4 of the width.
    framed = np.zeros((64, 64, 3), dtype=np.uint8)
    framed[:, 8:56] = 255
    cropped = corrupt(framed, "centre_crop", 1, None)
    assert (cropped[:, 1:-1] == 255).all() and (cropped >= 200).all()
    # A one-pixel checkerboard at half the resolution is a flat grey.
    board = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    assert np.abs(corrupt(board, "low_resolution", 1, None).astype(int) - 128).max() <= 3
    # The inscribed circle (severity 3): the corners black, the centre untouched.
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    circled = corrupt(image, "black_corners", 3, np.random.default_rng(0))
    assert (circled[0, 0] == 0).all() and (circled[-1, -1] == 0).all() and (circled[32, 32] == 200).all()
    assert abs((circled[..., 0] == 0).mean() - (1 - np.pi / 4)) < 0.03
    # Hairs only darken; more at a higher severity.
    dark = [
        (corrupt(image, "hair", severity, np.random.default_rng(1))[..., 0] < 200).mean() for severity in SEVERITIES
    ]
    assert 0 < dark[0] < dark[1] < dark[2]
    assert (corrupt(image, "hair", 3, np.random.default_rng(1)) <= image).all()


def test_corruptions_are_seeded_by_the_image_id_not_its_place_in_the_batch():
    images = np.stack([colourful(seed=seed) for seed in range(4)])
    keys = image_keys(["ISIC_1", "ISIC_2", "ISIC_3", "ISIC_4"])
    first = corrupt_images(images, "hair", 2, seed=0, keys=keys)
    np.testing.assert_array_equal(corrupt_images(images, "hair", 2, seed=0, keys=keys), first)
    order = [2, 0, 3, 1]
    np.testing.assert_array_equal(corrupt_images(images[order], "hair", 2, seed=0, keys=keys[order]), first[order])
    assert not np.array_equal(corrupt_images(images, "hair", 2, seed=1, keys=keys), first)


def test_a_bad_corruption_or_severity_is_refused():
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(colourful(), "fog", 1, None)
    with pytest.raises(ValueError, match="severity must be 0 .none. or one of 1, 2, 3; got 4"):
        corrupt(colourful(), "blur", 4, None)


# === The benchmark's scores ===


def test_scores_count_each_corruption_and_severity_and_their_mean():
    y_true = np.array([0, 0, 1, 1])
    one_hot = np.eye(7)[[0, 0, 1, 1]]
    wrong = np.eye(7)[[1, 1, 0, 0]]
    corrupted = np.repeat(one_hot[None, None], len(SEVERITIES), axis=1).repeat(len(CORRUPTIONS), axis=0)
    corrupted[0, 2] = wrong  # colour temperature at severity 3: every image wrong
    corrupted[1, 0, 0] = np.eye(7)[1]  # gamma at severity 1: one of the two class-0 images wrong
    scores = score_robustness(y_true, one_hot, corrupted)
    assert scores["clean_balanced_accuracy"] == 1.0
    assert scores["corruptions"]["colour_temperature"]["severities"] == {"1": 1.0, "2": 1.0, "3": 0.0}
    assert scores["corruptions"]["gamma"]["severities"]["1"] == 0.75  # (1/2 + 1) / 2
    assert scores["corruptions"]["colour_temperature"]["mean"] == pytest.approx(2 / 3)
    # 33 cells: 31 at 1, one at 0, one at 0.75.
    assert scores["mean_corrupted_balanced_accuracy"] == pytest.approx((31 + 0.75) / 33)
    assert scores["relative_balanced_accuracy"] == pytest.approx((31 + 0.75) / 33)
    assert len(scores["corruptions"]) == 11 and scores["n_images"] == 4


def test_pooled_predictions_average_the_models_that_scored_an_image():
    shape = (len(CORRUPTIONS), len(SEVERITIES))
    first = (np.array(["a", "b"]), np.array([0, 1]), np.eye(7)[[0, 1]], np.zeros((*shape, 2, 7)))
    second = (np.array(["b", "c"]), np.array([1, 2]), np.eye(7)[[3, 2]], np.ones((*shape, 2, 7)))
    ids, labels, clean, corrupted = pool_predictions([first, second])
    assert list(ids) == ["a", "b", "c"] and list(labels) == [0, 1, 2]
    np.testing.assert_allclose(clean[1], (np.eye(7)[1] + np.eye(7)[3]) / 2)
    np.testing.assert_allclose(corrupted[:, :, :, 0], np.broadcast_to([0, 0.5, 1], (*shape, 3)))
    with pytest.raises(DataError, match="different true classes"):
        pool_predictions([first, (np.array(["a"]), np.array([5]), np.eye(7)[[0]], np.zeros((*shape, 1, 7)))])
    assert balanced_accuracy([0, 0, 1], [0, 1, 1]) == 0.75


# === Corruption augmentation and grey world ===


def test_corruption_augmentation_corrupts_training_images_only_reproducibly():
    images = np.stack([colourful(seed=seed) for seed in range(8)])
    labels = np.arange(8) % 7
    options = CorruptionAugmentation(p=1.0, severity=3)

    def batch(sequence):
        return sequence[0][0]

    plain = training_sequence(images, np.arange(8), labels, batch_size=8, augment=False, seed=3)
    corrupted = training_sequence(images, np.arange(8), labels, batch_size=8, augment=False, corruption=options, seed=3)
    again = training_sequence(images, np.arange(8), labels, batch_size=8, augment=False, corruption=options, seed=3)
    np.testing.assert_array_equal(batch(corrupted), batch(again))
    assert all(not np.array_equal(a, b) for a, b in zip(batch(corrupted), batch(plain)))
    # p = 0 draws nothing: the turns, flips and order are those of a run without the setting.
    turned = training_sequence(images, np.arange(8), labels, batch_size=8, seed=3)
    off = training_sequence(
        images, np.arange(8), labels, batch_size=8, corruption=CorruptionAugmentation(p=0.0), seed=3
    )
    np.testing.assert_array_equal(batch(off), batch(turned))
    # The cache is read-only memory: the corrupted batch is a copy.
    assert (images == np.stack([colourful(seed=seed) for seed in range(8)])).all()


def test_validation_and_test_sequences_are_never_corrupted(toy_dir):
    data = prepare_data(toy_dir, image_size=32, verbose=False)
    options = CorruptionAugmentation(p=1.0)
    for name in ("val", "test"):
        _, cache_rows, _ = data.subset(name)
        first = data.sequence(name, corruption=options, batch_size=4)[0][0]
        np.testing.assert_array_equal(first, data.cache.images[cache_rows[:4]].astype(np.float32))


def test_corruption_augmentation_setting_is_checked():
    config = load_config(
        "cnn", TINY_CONFIG, {"corruption_augmentation": {"p": 0.5, "severity": 2, "corruptions": ["hair", "jpeg"]}}
    )
    assert config.corruption_options == CorruptionAugmentation(p=0.5, severity=2, corruptions=("hair", "jpeg"))
    for bad, message in (
        ({"p": 1.5}, r"p is the chance an image is corrupted, in \[0, 1\]; got 1.5"),
        ({"severity": 4}, "severity is the strongest drawn, one of 1, 2, 3; got 4"),
        ({"corruptions": ["fog"]}, "unknown corruption 'fog'"),
        ({"strength": 1}, "unknown corruption_augmentation option 'strength'"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config("cnn", TINY_CONFIG, {"corruption_augmentation": bad})


def test_colour_constancy_power_1_is_grey_world():
    image = np.zeros((1, 2, 2, 3), dtype=np.float32)
    image[..., :] = np.array([0.2, 0.4, 0.6]) * 255
    image[0, 0, 0] = np.array([0.1, 0.3, 0.5]) * 255
    balanced = keras.ops.convert_to_numpy(ShadesOfGrey(power=1)(image))
    means = balanced.mean(axis=(0, 1, 2)) / 255
    # Every channel's mean becomes the grey of the means' root mean square.
    light = image.mean(axis=(0, 1, 2)) / 255
    np.testing.assert_allclose(means, np.sqrt((light**2).sum() / 3), atol=1e-5)


# === Test-time resolution ===


def small_model(pooling=True):
    inputs = keras.Input((32, 32, 3), name="image")
    features = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    features = keras.layers.GlobalAveragePooling2D()(features) if pooling else keras.layers.Flatten()(features)
    return keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(features))


def test_a_globally_pooled_model_takes_another_image_size_with_the_same_weights():
    model = small_model()
    resized = with_image_size(model, 48)
    assert tuple(resized.inputs[0].shape) == (None, 48, 48, 3)
    for before, after in zip(model.get_weights(), resized.get_weights()):
        np.testing.assert_array_equal(before, after)
    # A flat image gives the same pooled features at any size (away from the padded border, alike).
    flat = np.full((1, 48, 48, 3), 0.5, dtype=np.float32)
    np.testing.assert_allclose(resized.predict_on_batch(flat), model.predict_on_batch(flat[:, :32, :32]), atol=2e-2)
    with pytest.raises(ValueError, match="weights depend on its input size"):
        with_image_size(small_model(pooling=False), 48)


# === Ensembles of configurations ===


def out_of_fold_table(predicted, dx):
    return pd.DataFrame(np.eye(7)[predicted], index=[f"ISIC_{i}" for i in range(len(dx))]).assign(dx=dx)


def test_the_ensemble_is_chosen_on_out_of_fold_balanced_accuracy():
    dx = ["nv", "nv", "mel", "mel"]  # nv: class 5, mel: class 4
    tables = {
        "a": out_of_fold_table([5, 5, 5, 4], dx),  # 0.75
        "b": out_of_fold_table([5, 4, 4, 4], dx),  # 0.75
        "c": out_of_fold_table([0, 0, 0, 0], dx),  # 0
    }
    choice = choose_ensemble(tables)
    # a+b: image 1 ties 5 and 4 (argmax takes the first, 4: wrong), image 2 ties (4 wins: right):
    # nv 1/2, mel 2/2 -> 0.75; a+b+c is no better; the smaller wins the tie, then the earlier.
    assert len(choice["candidates"]) == 4
    assert choice["configurations"] == ["a", "b"] and choice["out_of_fold_balanced_accuracy"] == 0.75
    tables["c"] = out_of_fold_table([5, 5, 4, 4], dx)  # perfect alone, and with either other
    assert choose_ensemble(tables)["configurations"] == ["a", "c"]


def test_an_ensemble_of_configurations_is_named_with_plus_or_as_the_chosen_one(tmp_path):
    assert resolve_configurations(tmp_path, "cnn+densenet") == ["cnn", "densenet"]
    assert resolve_configurations(tmp_path, "cnn") == ["cnn"] and resolve_configurations(tmp_path, None) == [None]
    with pytest.raises(DataError, match="name each configuration of an ensemble once"):
        resolve_configurations(tmp_path, "cnn+cnn")
    with pytest.raises(DataError, match="its summary chose no ensemble of configurations"):
        resolve_configurations(tmp_path, "ensemble")


# === End to end, at toy size ===


@pytest.fixture(scope="module")
def two_configuration_study(toy_dir, tmp_path_factory):
    """cnn and cnn-meta over two folds, with the benchmark at the end of each run (`robustness: true`)."""
    output = tmp_path_factory.mktemp("robust_study")
    config = output / "study.yaml"
    config.write_text(TINY_CONFIG.read_text() + "\nstudy: [cnn, cnn-meta]\n")
    arguments = ["--model", "all", "--folds", 2, "--config", config, "--data-dir", toy_dir, "--output-dir", output]
    assert run_main(*arguments, "--set", "robustness=true", "--set", "corruption_augmentation={p: 0.5}") == 0
    (study_dir,) = (output / "studies").iterdir()
    return study_dir


def test_each_run_and_configuration_has_its_benchmark_in_its_report_and_summary(two_configuration_study):
    study_dir = two_configuration_study
    runs = json.loads((study_dir / "study.json").read_text())["runs"]
    assert len(runs) == 4
    split = pd.read_csv(runs[0]["run_dir"] + "/split.csv")
    run_dir = runs[0]["run_dir"]
    robustness = json.loads(open(f"{run_dir}/robustness.json").read())
    assert robustness["subsets"]["val"]["n_images"] == (split["subset"] == "val").sum()
    assert robustness["subsets"]["test"]["n_images"] == (split["subset"] == "test").sum()
    assert all(len(scores["corruptions"]) == 11 for scores in robustness["subsets"].values())
    metrics = json.loads(open(f"{run_dir}/metrics.json").read())
    assert (
        metrics["robustness"]["test"]["mean_corrupted_balanced_accuracy"]
        == robustness["subsets"]["test"]["mean_corrupted_balanced_accuracy"]
    )
    assert "## Robustness" in open(f"{run_dir}/report.md").read()

    # The configuration's test: every fold model on the test images; its validation: out of fold.
    configuration = json.loads((study_dir / "robustness" / "cnn.robustness.json").read_text())
    assert configuration["subsets"]["test"]["n_images"] == robustness["subsets"]["test"]["n_images"]
    assert configuration["subsets"]["val"]["n_images"] == (split["subset"] != "test").sum()
    summary = (study_dir / "summary" / "summary.md").read_text()
    assert "## Robustness" in summary and "## Ensemble of configurations" in summary


def test_the_chosen_ensemble_predicts_as_the_mean_of_its_configurations_fold_ensembles(
    two_configuration_study, toy_dir, tmp_path
):
    study_dir = two_configuration_study
    summary = json.loads((study_dir / "summary" / "summary.json").read_text())
    chosen = summary["configuration_ensemble"]
    assert chosen["configurations"] == ["cnn", "cnn-meta"] and chosen["label"] == "cnn+cnn-meta"
    ensemble = (
        pd.read_csv(study_dir / "summary" / "ensembles" / "cnn+cnn-meta" / "predictions.csv")
        .filter(like="prob_")
        .to_numpy()
    )
    parts = [
        pd.read_csv(study_dir / "summary" / "ensembles" / name / "predictions.csv").filter(like="prob_").to_numpy()
        for name in ("cnn", "cnn-meta")
    ]
    np.testing.assert_allclose(ensemble, np.mean(parts, axis=0), atol=1e-4)

    predictor = Predictor.load(study_dir / "ensemble")
    assert (predictor.configuration, len(predictor.members), predictor.takes_metadata) == ("cnn+cnn-meta", 4, True)
    images = np.stack(
        [
            np.asarray(keras.utils.load_img(path, target_size=(32, 32)))
            for path in sorted((toy_dir / "images").iterdir())[:3]
        ]
    )
    separate = [Predictor.load(study_dir / name).predict(images) for name in ("cnn", "cnn-meta")]
    np.testing.assert_allclose(predictor.predict(images), np.mean(separate, axis=0), atol=1e-6)

    # The benchmark of the ensemble comes from its runs' files, with no model run again.
    assert run_main("robustness", study_dir / "ensemble", "--subset", "test") == 0
    assert (study_dir / "robustness" / "cnn+cnn-meta.robustness.json").is_file()
    # evaluate --data-dir takes it, and writes beside the study.
    assert run_main("evaluate", study_dir / "ensemble", "--data-dir", toy_dir) == 0
    assert (study_dir / "external" / "cnn+cnn-meta" / toy_dir.name / "metrics.json").is_file()


def test_a_run_is_evaluated_at_a_larger_test_time_size(two_configuration_study):
    runs = json.loads((two_configuration_study / "study.json").read_text())["runs"]
    run_dir = runs[0]["run_dir"]
    assert run_main("evaluate", run_dir, "--image-size", 48) == 0
    folder = f"{run_dir}/size-48px"
    validation = json.loads(open(f"{folder}/validation_metrics.json").read())
    test = pd.read_csv(f"{folder}/predictions.csv")
    assert validation["n_images"] == len(pd.read_csv(f"{folder}/val_predictions.csv"))
    assert len(test) == len(pd.read_csv(f"{run_dir}/predictions.csv"))
    assert Predictor.load(run_dir, image_size=48).image_size == 48
    before = open(f"{run_dir}/robustness.json").read()
    assert run_main("robustness", run_dir, "--subset", "test") == 0  # scored already: kept, not predicted again
    assert open(f"{run_dir}/robustness.json").read() == before
