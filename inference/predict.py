"""Predicting new images with a trained run: any JPEG or PNG, with or without metadata.

    from inference import Predictor, predict_files
    predictor = Predictor.load("results/runs/20261123-101500-densenet")   # or STUDY_DIR/<configuration>
    table = predict_files(predictor, ["photo.jpg", "clinic_images/"], tta=True)

Images go through `dataset.read_image`, the decoder and resize every training image went
through, so an image of any size, aspect or mode reaches the model as HAM10000's did. A
metadata model encodes age, sex and site with the encoder saved in its run folder (fitted on its
training subset); an image without metadata gets the encoder's "unknown". A study's configuration
predicts with the mean of its fold models (`evaluation.Predictor`).
"""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from common.files import blocking_file, write_csv, write_json
from common.tables import line_number, read_csv
from dataset.images import IMAGE_SUFFIXES, first_few, read_image
from dataset.metadata import CLASS_DESCRIPTIONS, CLASS_NAMES, UNKNOWN, validate_metadata
from evaluation.predictions import PROBABILITY_COLUMNS
from inference.calibrated import Calibration, calibrated_columns
from inference.explain import explain_images

OUTPUT_SUFFIXES = (".csv", ".json")
METADATA_COLUMNS = ("age", "sex", "localization")


def collect_images(paths):
    """The image files named by the arguments, in the order given; a folder's images sorted by name.

    Raises:
        DataError: a path does not exist, or a folder holds no JPEG or PNG file.
    """
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                entry for entry in path.iterdir() if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise DataError(f"{path}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)} files)")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return files


def decode_images(files, size, *, skip_unreadable=False):
    """Decodes files to a (n, size, size, 3) uint8 array; returns (images, files decoded).

    Raises:
        DataError: files cannot be decoded (all of them are named), unless `skip_unreadable`,
            which leaves them out with a warning; or none is left.
    """
    images, decoded, unreadable = [], [], []
    for path in files:
        try:
            images.append(read_image(path, size))
            decoded.append(path)
        except DataError:
            unreadable.append(path)
    if unreadable:
        summary = (
            f"{len(unreadable)} of {len(files)} files are not readable JPEG or PNG images: {first_few(unreadable)}"
        )
        if not skip_unreadable:
            raise DataError(f"{summary} (pass --skip-unreadable to leave them out)")
        warnings.warn(f"{summary}; leaving them out", stacklevel=2)
    if not images:
        raise DataError("no readable images to predict")
    return np.stack(images), decoded


def read_image_metadata(path):
    """Reads an `image_id, age, sex, localization` table (HAM10000's metadata columns).

    Returns:
        A DataFrame indexed by `image_id` with `age` (NaN where missing), `sex` and
        `localization` ("unknown" where missing).

    Raises:
        DataError: the file is unreadable, has no `image_id` column, or a row has an empty or
            repeated id or a non-numeric age; the message names the file and line.
    """
    frame = read_csv(path, "metadata file not found").rename(columns=str.strip)
    if "image_id" not in frame.columns:
        raise DataError(f"{path}: missing column 'image_id' (expected image_id and any of age, sex, localization)")
    # The training metadata's checks, which also require a lesion and a diagnosis: new images
    # have neither, so each image stands for its own lesion and the diagnosis is a placeholder.
    frame = frame.assign(lesion_id=frame["image_id"], dx=CLASS_NAMES[0])
    return validate_metadata(frame, source=path).set_index("image_id").loc[:, list(METADATA_COLUMNS)]


def check_known_values(table, image_ids, predictor, source):
    """Raises DataError naming the first row, among the images', whose sex or site the model does not know.

    The server's rule: a typo ("mal") would otherwise be encoded as "unknown", without a word.
    """
    rows = table[table.index.isin(image_ids)]
    for column, known in (("sex", predictor.sexes), ("localization", predictor.sites)):
        unknown = ~rows[column].isin(known)
        if unknown.any():
            image_id = rows.index[unknown][0]
            raise DataError(
                f"{source}, line {line_number(table.index.get_loc(image_id))}: unknown {column} {rows.at[image_id, column]!r} "
                f"(this model knows {', '.join(known)})"
            )


def metadata_for(files, table):
    """The metadata rows of the files (matched by file name without suffix), unknown where absent.

    Warns once, in one line, when some files have no row.
    """
    ids = [path.stem for path in files]
    rows = table.reindex(ids)
    absent = [image_id for image_id in ids if image_id not in table.index]
    if absent:
        warnings.warn(
            f"{len(absent)} of {len(ids)} images have no metadata row ({first_few(absent)}): "
            "their age, sex and site are encoded as unknown",
            stacklevel=2,
        )
    rows["sex"] = rows["sex"].fillna(UNKNOWN)
    rows["localization"] = rows["localization"].fillna(UNKNOWN)
    return rows.reset_index(drop=True)


def predict_files(
    predictor,
    paths,
    *,
    metadata_path=None,
    tta=False,
    skip_unreadable=False,
    explain_dir=None,
    calibrated=False,
    conformal=None,
    conformal_kind="marginal",
):
    """Predicts image files and folders with a loaded run.

    Args:
        predictor: a `Predictor`.
        paths: image files and folders of images, in the order the rows should have.
        metadata_path: a CSV with `image_id` (the file name without suffix) and any of `age, sex,
            localization`; images it does not list, or all images without it, get "unknown".
        tta: average over the eight rotations and reflections (see `Predictor.predict`).
        skip_unreadable: leave out files that are not readable images, with a warning.
        explain_dir: if given, a Grad-CAM figure per image is written there (see
            `inference.explain`); an existing folder is never written into.
        calibrated: also give the probabilities with the run's temperature applied (`inference.calibrated`).
        conformal: a level of the run's conformal sets (0.90, 0.95): also give each image's set.
        conformal_kind: "marginal" or "class_conditional" thresholds for the sets.

    Returns:
        A DataFrame, one row per image: `image` (the path), `pred` (the class code), `pred_name`,
        `prob_<class>` for the seven classes, then `models`, how many models answered (a study
        configuration's finished runs); `calibrated_prob_<class>` with `calibrated`;
        `conformal_set` and `conformal_set_size` with `conformal`.
    """
    files = collect_images(paths)
    # The calibration is read, and the level checked, before any image is decoded.
    calibration = None
    if calibrated or conformal is not None:
        calibration = Calibration.load(predictor)
        if conformal is not None:
            calibration.threshold(conformal, conformal_kind)
    # The metadata file is checked before the images are decoded, so a bad one fails fast.
    table = read_image_metadata(metadata_path) if metadata_path is not None else None
    if table is not None and not predictor.takes_metadata:
        warnings.warn(
            f"{predictor.name} is an image-only model: the metadata in {metadata_path} is not used", stacklevel=2
        )
    if table is not None and predictor.takes_metadata:
        check_known_values(table, [path.stem for path in files], predictor, metadata_path)
    images, files = decode_images(files, predictor.image_size, skip_unreadable=skip_unreadable)
    metadata = None
    if predictor.takes_metadata:
        if table is None:
            warnings.warn(
                f"{predictor.name} takes metadata and none was given (--metadata CSV): "
                "age, sex and site are encoded as unknown",
                stacklevel=2,
            )
        else:
            metadata = metadata_for(files, table)
    probabilities = predictor.predict(images, metadata, tta=tta)
    if explain_dir is not None:
        explain_images(predictor, images, files, probabilities, metadata, explain_dir)
    table = predictions_table(files, probabilities, predictor.model_count)
    if calibration is None:
        return table
    extra = calibrated_columns(
        calibration, probabilities, calibrated=calibrated, conformal=conformal, kind=conformal_kind
    )
    return pd.concat([table, extra], axis=1)


def predictions_table(files, probabilities, models):
    predicted = np.array(CLASS_NAMES)[probabilities.argmax(axis=1)]
    frame = pd.DataFrame(
        {
            "image": [str(path) for path in files],
            "pred": predicted,
            "pred_name": [CLASS_DESCRIPTIONS[name] for name in predicted],
        }
    )
    return pd.concat([frame, pd.DataFrame(probabilities, columns=list(PROBABILITY_COLUMNS))], axis=1).assign(
        models=models
    )


def check_output_path(path):
    """Checks, before any work, that predictions can be written to `path`.

    Raises:
        DataError: the suffix is neither .csv nor .json, the file exists (earlier results are
            never overwritten), or a folder above it is a file.
    """
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"{path}: the output must be a .csv or .json file")
    if path.exists():
        raise DataError(f"{path}: already exists; choose another name (earlier predictions are never overwritten)")
    blocking = blocking_file(path.parent)
    if blocking is not None:
        raise DataError(f"{blocking}: is a file, not a folder, so {path} cannot be written (choose another --output)")
    return path


def write_predictions_table(path, table):
    """Writes the table as CSV, or as JSON records (one object per image), by the file's suffix."""
    path = check_output_path(path)
    if path.suffix.lower() == ".csv":
        write_csv(path, table)
    else:
        write_json(path, table.to_dict(orient="records"))
