"""The true classes of an external test set, in either of the two formats they come in.

- HAM10000 metadata: `image_id, dx` and optionally `lesion_id, age, sex, localization`
  (`HAM10000_metadata.csv` itself, or any table with its columns).
- ISIC 2018 challenge (task 3) ground truth: `image` and one-hot columns
  `MEL, NV, BCC, AKIEC, BKL, DF, VASC`, e.g. `ISIC2018_Task3_Test_GroundTruth.csv`.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from common.tables import line_number, read_csv
from dataset.metadata import CLINICAL_COLUMNS, validate_metadata

# ISIC 2018 ground-truth column -> class name.
ISIC_COLUMNS = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AKIEC": "akiec", "BKL": "bkl", "DF": "df", "VASC": "vasc"}
LABEL_COLUMNS = ("image_id", "lesion_id", "dx") + CLINICAL_COLUMNS


def read_labels(path):
    """Reads a labels file in HAM10000 metadata or ISIC 2018 ground-truth format.

    A file without lesion ids (every ISIC file, and HAM10000-format files without `lesion_id`)
    gets each image as its own lesion. Missing age becomes NaN, missing sex or site "unknown",
    as in `dataset.metadata.load_metadata`.

    Returns:
        A DataFrame with columns `image_id, lesion_id, dx, age, sex, localization`, in file order.

    Raises:
        DataError: the file is missing or unreadable, its header is neither format, or a row has
            an empty or repeated image id, an unknown class, a non-numeric age, or (ISIC) not
            exactly one 1 among the class columns. The message names the file and line.
    """
    path = Path(path)
    frame = read_csv(path, "labels file not found").rename(columns=str.strip)
    columns = set(frame.columns)
    if {"image", *ISIC_COLUMNS} <= columns:
        frame = _from_isic(frame, path)
    elif {"image_id", "dx"} <= columns:
        if "lesion_id" not in columns:
            frame = frame.assign(lesion_id=frame["image_id"])
    else:
        raise DataError(
            f"{path}: header ({', '.join(frame.columns)}) is neither HAM10000 metadata (image_id, dx, "
            f"optional lesion_id, {', '.join(CLINICAL_COLUMNS)}) nor ISIC 2018 ground truth "
            f"(image, {', '.join(ISIC_COLUMNS)})"
        )
    return validate_metadata(frame, source=path).loc[:, list(LABEL_COLUMNS)]


def _from_isic(frame, path):
    """The ISIC table as HAM10000 columns: each image's class is the column holding its 1."""
    one_hot = frame.loc[:, list(ISIC_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    valid = one_hot.isin([0, 1]).all(axis=1) & (one_hot == 1).sum(axis=1).eq(1)
    if not valid.all():
        row = int(np.flatnonzero(~valid)[0])
        values = ", ".join(f"{column}={frame.at[row, column]}" for column in ISIC_COLUMNS)
        raise DataError(
            f"{path}, line {line_number(row)}: expected exactly one 1 and otherwise 0 among the class columns; got {values}"
        )
    return pd.DataFrame(
        {"image_id": frame["image"], "lesion_id": frame["image"], "dx": one_hot.idxmax(axis=1).map(ISIC_COLUMNS)}
    )
