"""`main.py predict`: new images through the training resize, metadata, TTA, output files, explanations, bad input."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import run_main, study_run
from PIL import Image

from dataset.augment import DIHEDRAL_TRANSFORMS
from evaluation.predictions import PROBABILITY_COLUMNS


def test_images_are_predicted_exactly_as_in_evaluation_in_the_order_given(study, real_toy_dir, tmp_path, capsys):
    run = study_run(study, "cnn")
    expected = pd.read_csv(run / "predictions.csv").set_index("image_id")
    test_ids = list(expected.index[:4])
    folder = tmp_path / "folder"
    folder.mkdir()
    for image_id in test_ids[1:]:
        shutil.copy(real_toy_dir / "images" / f"{image_id}.jpg", folder)
    (folder / "notes.txt").write_text("not an image, and not an image suffix: ignored")
    capsys.readouterr()
    assert run_main("predict", run, real_toy_dir / "images" / f"{test_ids[0]}.jpg", folder) == 0
    lines = capsys.readouterr().out.splitlines()
    table = pd.read_csv(pd.io.common.StringIO("\n".join(lines)))
    assert list(table.columns) == ["image", "pred", "pred_name", *PROBABILITY_COLUMNS, "models"]
    # The file named first, then the folder's images sorted by name.
    assert [name.rsplit("/", 1)[1][:-4] for name in table["image"]] == [test_ids[0], *sorted(test_ids[1:])]
    # The same decoder and resize as training and evaluation: the run's own test predictions.
    order = [name.rsplit("/", 1)[1][:-4] for name in table["image"]]
    np.testing.assert_allclose(
        table[list(PROBABILITY_COLUMNS)], expected.loc[order, list(PROBABILITY_COLUMNS)], atol=2e-4
    )
    assert (table["pred"] == table[list(PROBABILITY_COLUMNS)].idxmax(axis=1).str[5:]).all()
    assert table["pred_name"].str.len().gt(3).all()


def test_a_study_of_several_configurations_predicts_with_the_one_named(study, real_toy_dir, capsys):
    (study_dir,) = (study / "studies").iterdir()
    image = next((real_toy_dir / "images").iterdir())
    assert run_main("predict", study_dir, image) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {study_dir} holds 4 configurations (cnn, densenet, vgg16, vgg16-meta): name one, as in {study_dir / 'cnn'}"
    )
    tables = []
    for folder in (study_dir / "densenet", study_run(study, "densenet")):  # a configuration of one run is that run
        assert run_main("predict", folder, image) == 0
        tables.append(capsys.readouterr().out)
    assert tables[0] == tables[1]


def partial_fold_study(study, folder):
    """A 2-fold study of cnn whose fold 1 has not finished (still training, or killed); fold 0 is the study's cnn run."""
    folder.mkdir()
    entry = {"configuration": "cnn", "seed": 0, "config": {}, "seconds": None}
    runs = [
        {**entry, "fold": 0, "run_dir": str(study_run(study, "cnn")), "finished": True},
        {**entry, "fold": 1, "run_dir": None, "finished": False},
    ]
    (folder / "study.json").write_text(json.dumps({"name": folder.name, "folds": 2, "seeds": 1, "runs": runs}))
    return folder


PARTIAL_NOTE = "predicting with 1 of 2 fold models, those finished (the others are training or stopped: the ensemble is incomplete)"


def test_a_partial_fold_ensemble_says_how_many_models_answer(study, real_toy_dir, tmp_path, capsys):
    study_dir = partial_fold_study(study, tmp_path / "partial")
    image = next((real_toy_dir / "images").iterdir())
    capsys.readouterr()
    assert run_main("predict", study_dir / "cnn", image) == 0
    captured = capsys.readouterr()
    assert captured.err == f"warning: partial/cnn: {PARTIAL_NOTE}\n"
    assert pd.read_csv(pd.io.common.StringIO(captured.out))["models"].tolist() == [1]


def test_any_size_and_mode_is_accepted(study, tmp_path, capsys):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (50, 90, 4), dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(pixels[..., 0], "L").save(tmp_path / "grey.png")
    Image.fromarray(pixels[..., :3]).save(tmp_path / "wide.jpeg")
    assert run_main("predict", study_run(study, "densenet"), tmp_path) == 0
    table = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert len(table) == 3 and np.allclose(table[list(PROBABILITY_COLUMNS)].sum(axis=1), 1, atol=1e-3)


def test_metadata_model_uses_the_given_metadata_and_warns_once_for_the_rest(study, real_toy_dir, tmp_path, capsys):
    run = study_run(study, "vgg16-meta")
    expected = pd.read_csv(run / "predictions.csv").set_index("image_id")
    test_ids = list(expected.index[:3])
    metadata = pd.read_csv(real_toy_dir / "HAM10000_metadata.csv").set_index("image_id")
    # Only the first two images have a row; the third is encoded as unknown.
    metadata.loc[test_ids[:2], ["age", "sex", "localization"]].reset_index().to_csv(tmp_path / "meta.csv", index=False)
    images = [real_toy_dir / "images" / f"{image_id}.jpg" for image_id in test_ids]
    capsys.readouterr()
    assert (
        run_main("predict", run, *images, "--metadata", tmp_path / "meta.csv", "--output", tmp_path / "out.json") == 0
    )
    table = pd.DataFrame(json.loads((tmp_path / "out.json").read_text()))
    np.testing.assert_allclose(
        table.loc[:1, list(PROBABILITY_COLUMNS)], expected.loc[test_ids[:2], list(PROBABILITY_COLUMNS)], atol=2e-4
    )
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "1 of 3 images have no metadata row" in warnings[0] and test_ids[2] in warnings[0]

    assert run_main("predict", run, images[0]) == 0
    assert "takes metadata and none was given" in capsys.readouterr().err


def test_metadata_the_model_does_not_know_is_one_line_naming_the_row(study, real_toy_dir, tmp_path, capsys):
    run = study_run(study, "vgg16-meta")
    images = sorted((real_toy_dir / "images").iterdir())[:2]
    rows = [
        f"{images[0].stem},45,male,back",
        f"{images[1].stem},45,mal,lower_extremity",
    ]  # typos of male, lower extremity
    (tmp_path / "meta.csv").write_text("\n".join(["image_id,age,sex,localization", *rows]) + "\n")
    assert run_main("predict", run, *images, "--metadata", tmp_path / "meta.csv") == 2
    error = capsys.readouterr().err
    assert (
        error.startswith(f"error: {tmp_path / 'meta.csv'}, line 3: unknown sex 'mal' (this model knows ")
        and error.count("\n") == 1
    )
    assert "female, male, unknown" in error
    (tmp_path / "meta.csv").write_text(
        "\n".join(["image_id,age,sex,localization", rows[0], rows[1].replace("mal", "male")]) + "\n"
    )
    assert run_main("predict", run, *images, "--metadata", tmp_path / "meta.csv") == 2
    assert "line 3: unknown localization 'lower_extremity'" in capsys.readouterr().err
    # A row of an image not predicted is not judged.
    assert run_main("predict", run, images[0], "--metadata", tmp_path / "meta.csv") == 0


def test_explanations_into_an_existing_folder_say_where_they_went(study, real_toy_dir, tmp_path, capsys):
    (tmp_path / "gradcam").mkdir()
    image = sorted((real_toy_dir / "images").iterdir())[0]
    assert run_main("predict", study_run(study, "cnn"), image, "--explain", tmp_path / "gradcam") == 0
    assert (
        f"warning: {tmp_path / 'gradcam'} exists: the Grad-CAM figures go to {tmp_path / 'gradcam-2'}"
        in capsys.readouterr().err
    )
    assert list((tmp_path / "gradcam").iterdir()) == [] and (tmp_path / "gradcam-2" / f"{image.stem}.png").is_file()


def test_tta_averages_over_the_eight_rotations_and_reflections(study, tmp_path, capsys):
    """An image and any of its rotations or reflections get the same TTA prediction."""
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    for index, transform in enumerate(DIHEDRAL_TRANSFORMS):
        Image.fromarray(transform(image)[0]).save(tmp_path / f"{index}.png")
    run = study_run(study, "cnn")
    assert run_main("predict", run, tmp_path, "--tta") == 0
    tta = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))[list(PROBABILITY_COLUMNS)].to_numpy()
    np.testing.assert_allclose(tta, np.broadcast_to(tta[0], tta.shape), atol=1e-5)
    assert run_main("predict", run, tmp_path) == 0
    plain = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))[list(PROBABILITY_COLUMNS)].to_numpy()
    np.testing.assert_allclose(plain.mean(axis=0), tta[0], atol=1e-3)  # the printed values have 4 decimals


def test_output_files_and_explanations(study, real_toy_dir, tmp_path):
    run = study_run(study, "vgg16-meta")
    images = sorted((real_toy_dir / "images").iterdir())[:2]
    output = tmp_path / "predictions.csv"
    assert run_main("predict", run, *images, "--output", output, "--explain", tmp_path / "gradcam") == 0
    assert len(pd.read_csv(output)) == 2
    figures = sorted(path.name for path in (tmp_path / "gradcam").iterdir())
    assert figures == [f"{image.stem}.png" for image in images]
    assert Image.open(tmp_path / "gradcam" / figures[0]).size[0] > 600
    # Earlier predictions are never overwritten.
    before = output.read_bytes()
    assert run_main("predict", run, *images, "--output", output) == 2
    assert output.read_bytes() == before


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp, run: [run, tmp / "missing.jpg"], "no such file or folder"),
        (lambda tmp, run: [run, text_file(tmp / "fake.jpg")], "not readable JPEG or PNG images"),
        (lambda tmp, run: [run, empty_folder(tmp / "empty")], "no images in this folder"),
        (lambda tmp, run: [tmp, image_file(tmp / "a.png")], "model file not found"),
        (lambda tmp, run: [run, image_file(tmp / "a.png"), "--output", tmp / "out.txt"], "must be a .csv or .json"),
        # Checked before the model is loaded: the output's folder is a file.
        (
            lambda tmp, run: [tmp, image_file(tmp / "a.png"), "--output", text_file(tmp / "file") / "p.csv"],
            "file: is a file, not a folder",
        ),
        (
            lambda tmp, run: [run, image_file(tmp / "a.png"), "--metadata", text_file(tmp / "m.csv")],
            "missing column 'image_id'",
        ),
    ],
)
def test_bad_input_is_a_one_line_error(study, tmp_path, capsys, make, message):
    assert run_main("predict", *make(tmp_path, study_run(study, "cnn"))) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and "\n" not in error


def test_unreadable_files_in_a_folder_are_skipped_only_when_asked(study, tmp_path, capsys):
    image_file(tmp_path / "good.png")
    text_file(tmp_path / "broken.jpg")
    run = study_run(study, "cnn")
    assert run_main("predict", run, tmp_path) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert run_main("predict", run, tmp_path, "--skip-unreadable") == 0
    captured = capsys.readouterr()
    assert len(pd.read_csv(pd.io.common.StringIO(captured.out))) == 1
    assert "warning: 1 of 2 files are not readable" in captured.err and "broken.jpg" in captured.err


def text_file(path):
    path.write_text("hello")
    return path


def empty_folder(path):
    path.mkdir()
    return path


def image_file(path):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(path)
    return path


def test_each_run_has_a_gallery_of_confident_predictions_in_its_report(study):
    for run in (study / "runs").iterdir():
        entries = json.loads((run / "gallery" / "gallery.json").read_text())
        predictions = pd.read_csv(run / "predictions.csv").set_index("image_id")
        assert entries, run.name
        report = (run / "report.md").read_text()
        assert "## Gallery" in report
        for entry in entries:
            assert (run / entry["file"]).is_file() and f"]({entry['file']})" in report
            row = predictions.loc[entry["image_id"]]
            assert row["dx"] == entry["class"] and row["pred"] == entry["pred"]
            assert (entry["kind"] == "correct") == (row["dx"] == row["pred"])
            # The most confident of its kind: no image of the class, rightly or wrongly
            # predicted alike, has a higher top probability.
            alike = predictions[
                (predictions["dx"] == row["dx"])
                & ((predictions["dx"] == predictions["pred"]) == (entry["kind"] == "correct"))
            ]
            assert alike[list(PROBABILITY_COLUMNS)].max(axis=1).max() <= row[list(PROBABILITY_COLUMNS)].max() + 1e-9


@pytest.mark.parametrize("name", ["cnn", "vgg16-meta"])
def test_evaluate_tta_sits_beside_the_plain_evaluation_and_averages_the_eight_views(
    study, real_toy_dir, name, tmp_path, capsys
):
    run = shutil.copytree(study_run(study, name), tmp_path / "run")
    plain = {path.name: path.read_bytes() for path in run.iterdir() if path.suffix in (".csv", ".json")}
    assert run_main("evaluate", run, "--tta") == 0
    out = capsys.readouterr().out
    assert "balanced accuracy:" in out and "with test-time augmentation (8 views)" in out
    # The plain evaluation is recomputed from the same predictions: nothing in it changes.
    assert {name: (run / name).read_bytes() for name in plain} == plain
    tta = pd.read_csv(run / "tta" / "predictions.csv")
    assert list(tta["image_id"]) == list(pd.read_csv(run / "predictions.csv")["image_id"])
    assert json.loads((run / "tta" / "metrics.json").read_text())["n_images"] == len(tta)
    assert (run / "tta" / "report.md").read_text().startswith(f"# Evaluation of {run.name} with test-time augmentation")
    if name == "cnn":
        # `predict --tta` averages the eight views its own way: the two must agree.
        images = [real_toy_dir / "images" / f"{image_id}.jpg" for image_id in tta["image_id"][:4]]
        assert run_main("predict", run, *images, "--tta") == 0
        table = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
        np.testing.assert_allclose(table[list(PROBABILITY_COLUMNS)], tta[list(PROBABILITY_COLUMNS)][:4], atol=2e-4)
    # A second TTA evaluation goes beside the first, never over it.
    assert run_main("evaluate", run, "--tta") == 0
    assert (run / "tta-2" / "predictions.csv").read_bytes() == (run / "tta" / "predictions.csv").read_bytes()


# === Calibrated probabilities and conformal sets (issue 42) ===


def test_calibrated_probabilities_and_conformal_sets_are_the_evaluations(study, real_toy_dir, tmp_path):
    run = study_run(study, "cnn")
    calibration = json.loads((run / "calibration.json").read_text())
    # The run's evaluation applied the same temperature to the same test images.
    expected = pd.read_csv(run / "calibrated_predictions.csv").set_index("image_id")
    test_ids = list(expected.index[:6])
    images = [real_toy_dir / "images" / f"{image_id}.jpg" for image_id in test_ids]
    plain, output = tmp_path / "plain.csv", tmp_path / "calibrated.csv"
    assert run_main("predict", run, *images, "--output", plain) == 0
    assert run_main("predict", run, *images, "--output", output, "--calibrated", "--conformal", "0.9") == 0
    table = pd.read_csv(output, keep_default_na=False)
    calibrated_columns = [f"calibrated_prob_{column[5:]}" for column in PROBABILITY_COLUMNS]
    assert list(table.columns) == [
        "image",
        "pred",
        "pred_name",
        *PROBABILITY_COLUMNS,
        "models",
        *calibrated_columns,
        "conformal_set",
        "conformal_set_size",
    ]
    # Without the options the table is as before; with them, its first columns are unchanged.
    plain_table = pd.read_csv(plain)
    pd.testing.assert_frame_equal(table.iloc[:, : len(plain_table.columns)], plain_table)
    calibrated = table[calibrated_columns].to_numpy()
    np.testing.assert_allclose(calibrated, expected.loc[test_ids, list(PROBABILITY_COLUMNS)], atol=2e-4)
    # A class is in the 90% marginal set where 1 - its calibrated probability is at most q.
    q = calibration["conformal"]["0.90"]["marginal"]
    classes = [column[5:] for column in PROBABILITY_COLUMNS]
    sets = ["|".join(name for name, p in zip(classes, row) if 1 - p <= q) for row in calibrated]
    assert list(table["conformal_set"]) == sets
    assert list(table["conformal_set_size"]) == [len(s.split("|")) if s else 0 for s in sets]

    # Class-conditional: one q per class.
    output = tmp_path / "class-conditional.json"
    assert (
        run_main(
            "predict", run, *images, "--output", output, "--conformal", "0.95", "--conformal-kind", "class-conditional"
        )
        == 0
    )
    records = json.loads(output.read_text())
    per_class = np.array([calibration["conformal"]["0.95"]["class_conditional"][name] for name in classes])
    assert [record["conformal_set"] for record in records] == [
        "|".join(name for name, inside in zip(classes, 1 - row <= per_class) if inside) for row in calibrated
    ]
    assert "calibrated_prob_mel" not in records[0]


def test_calibration_that_is_not_there_is_a_one_line_error(study, real_toy_dir, tmp_path, capsys):
    run = study_run(study, "cnn")
    image = next((real_toy_dir / "images").iterdir())
    assert run_main("predict", run, image, "--conformal", "0.8") == 2
    assert capsys.readouterr().err.strip() == (
        f"error: conformal level 0.8: {run / 'calibration.json'} has sets at 0.90, 0.95 only"
    )
    # A run evaluated before calibration.json existed.
    old = shutil.copytree(run, tmp_path / run.name, ignore=shutil.ignore_patterns("calibration.json"))
    assert run_main("predict", old, image, "--calibrated") == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {old / 'calibration.json'}: not found, so there are no calibrated probabilities or conformal sets; "
        f"`python main.py evaluate {old}` fits it on the run's validation predictions"
    )
