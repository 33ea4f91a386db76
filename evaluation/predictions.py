"""`predictions.csv`: one row per test image with its true class, predicted class and probabilities.

Every metric, plot and comparison is computed from this file alone, so a run can be evaluated
again, or compared with another, without loading its model.

    image_id,dx,pred,prob_akiec,prob_bcc,prob_bkl,prob_df,prob_mel,prob_nv,prob_vasc
    ISIC_0027419,bkl,bkl,0.01,0.02,0.81,0.0,0.09,0.07,0.0
"""

from pathlib import Path

import numpy as np
import pandas as pd

from common import files
from common.errors import DataError
from common.tables import line_number, read_csv, require_columns
from dataset.metadata import CLASS_NAMES, class_indices

PROBABILITY_COLUMNS = tuple(f"prob_{name}" for name in CLASS_NAMES)
PREDICTION_COLUMNS = ("image_id", "dx", "pred") + PROBABILITY_COLUMNS


def predictions_frame(image_ids, true_labels, probabilities):
    """The table `predictions.csv` holds.

    Args:
        image_ids: one id per image.
        true_labels: the images' class indices.
        probabilities: (images, 7) predicted probabilities, columns in `CLASS_NAMES` order.

    Returns:
        A DataFrame with columns `image_id, dx, pred, prob_<class>...`; `pred` is the most
        probable class.
    """
    probabilities = np.asarray(probabilities)
    true_labels = np.asarray(true_labels)
    if probabilities.shape != (len(image_ids), len(CLASS_NAMES)) or len(true_labels) != len(image_ids):
        raise ValueError(
            f"need one id, label and row of {len(CLASS_NAMES)} probabilities per image; got "
            f"{len(image_ids)} ids, {len(true_labels)} labels and probabilities of shape {probabilities.shape}"
        )
    names = np.array(CLASS_NAMES)
    frame = pd.DataFrame(
        {"image_id": list(image_ids), "dx": names[true_labels], "pred": names[probabilities.argmax(axis=1)]}
    )
    return pd.concat([frame, pd.DataFrame(probabilities, columns=list(PROBABILITY_COLUMNS))], axis=1)


def write_predictions(path, frame):
    files.write_csv(path, frame.loc[:, list(PREDICTION_COLUMNS)])


def read_predictions(path):
    """Reads and checks a `predictions.csv`.

    Returns:
        (frame, y_true, probabilities): the table in file order, the true class indices and
        the (images, 7) probabilities.

    Raises:
        DataError: the file is missing or unreadable, lacks a column, or has a row with an empty
            or repeated image id, an unknown class, a probability that is not a number, or a
            `pred` other than its most probable class. The message names the file and line.
    """
    path = Path(path)
    frame = read_csv(path, "predictions file not found (it is written when a run's model is evaluated)")
    require_columns(frame, PREDICTION_COLUMNS, path)
    if frame.empty:
        raise DataError(f"{path}: has a header but no rows")

    probability_text = frame.loc[:, list(PROBABILITY_COLUMNS)]
    probabilities = probability_text.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    most_probable = np.array(CLASS_NAMES)[probabilities.argmax(axis=1)]
    image_ids, dx, pred = frame["image_id"], frame["dx"], frame["pred"]
    expected = ", ".join(CLASS_NAMES)
    problems = (
        (image_ids == "", lambda row: "empty image_id"),
        (image_ids.duplicated(), lambda row: f"image_id {image_ids[row]!r} appears more than once"),
        (~dx.isin(CLASS_NAMES), lambda row: f"unknown dx {dx[row]!r} (expected one of {expected})"),
        (~pred.isin(CLASS_NAMES), lambda row: f"unknown pred {pred[row]!r} (expected one of {expected})"),
        (~np.isfinite(probabilities).all(axis=1), lambda row: "a probability is not a number"),
        (
            pred != most_probable,
            lambda row: f"pred {pred[row]!r} is not the most probable class ({most_probable[row]!r})",
        ),
    )
    # In this order, so that a row reaching the last check has numbers to compare.
    for bad, describe in problems:
        if np.any(bad):
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}, line {line_number(row)}: {describe(row)}")
    return frame, class_indices(frame["dx"]), probabilities
