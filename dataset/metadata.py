"""HAM10000's metadata file: loading, validation and the seven diagnoses."""

from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from common.tables import line_number, read_csv, require_columns

# Alphabetical, as in the metadata file; a label's index in this tuple is its class index
# everywhere in the project (one-hot columns, confusion matrices, `prob_<class>` columns).
CLASS_NAMES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

CLASS_DESCRIPTIONS = {
    "akiec": "actinic keratosis / intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesion",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}

METADATA_FILENAME = "HAM10000_metadata.csv"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
# Optional clinical columns; where absent or empty they become explicit unknowns.
CLINICAL_COLUMNS = ("age", "sex", "localization")
UNKNOWN = "unknown"


def load_metadata(path):
    """Reads and validates a metadata CSV in HAM10000's format.

    Every row is kept: a missing age stays NaN, and a missing or empty sex or localization becomes
    "unknown" (the value HAM10000 itself uses), so no image is dropped for lacking metadata.

    Args:
        path: the CSV file (`HAM10000_metadata.csv` or another file with the same columns).

    Returns:
        A DataFrame with at least `lesion_id, image_id, dx, age, sex, localization`, in file order.

    Raises:
        DataError: the file is missing, a required column is absent, or a row has an empty id,
            a duplicate `image_id`, an unknown `dx` or a non-numeric age. The message names the
            file, the line and the problem.
    """
    path = Path(path)
    return validate_metadata(read_csv(path, "metadata file not found"), source=path)


def validate_metadata(frame, source="metadata"):
    """Validates and normalises a metadata table read with every column as a string."""
    frame = frame.rename(columns=str.strip)
    require_columns(
        frame,
        REQUIRED_COLUMNS,
        source,
        hint=f"a HAM10000 metadata file has columns {', '.join(REQUIRED_COLUMNS + CLINICAL_COLUMNS)}",
    )
    if frame.empty:
        raise DataError(f"{source}: has a header but no rows")

    frame = frame.copy()
    for column in frame.columns:
        frame[column] = frame[column].astype(str).str.strip()

    line = pd.Series([line_number(row) for row in range(len(frame))], index=frame.index)
    for column in ("lesion_id", "image_id"):
        empty = frame[column] == ""
        if empty.any():
            raise DataError(f"{source}, line {line[empty].iloc[0]}: empty {column}")
    duplicated = frame["image_id"].duplicated()
    if duplicated.any():
        first = frame.index[duplicated][0]
        raise DataError(
            f"{source}, line {line[first]}: image_id {frame.at[first, 'image_id']!r} appears more than once"
        )
    unknown_dx = ~frame["dx"].isin(CLASS_NAMES)
    if unknown_dx.any():
        first = frame.index[unknown_dx][0]
        raise DataError(
            f"{source}, line {line[first]}: unknown dx {frame.at[first, 'dx']!r} "
            f"(expected one of {', '.join(CLASS_NAMES)})"
        )

    age_text = frame["age"] if "age" in frame.columns else pd.Series("", index=frame.index)
    age = pd.to_numeric(age_text.replace({"": None, "nan": None, "NaN": None}), errors="coerce")
    bad_age = age.isna() & ~age_text.isin(["", "nan", "NaN"])
    if bad_age.any():
        first = frame.index[bad_age][0]
        raise DataError(f"{source}, line {line[first]}: age {age_text[first]!r} is not a number")
    frame["age"] = age.astype("float64")
    for column in ("sex", "localization"):
        values = frame[column] if column in frame.columns else pd.Series("", index=frame.index)
        frame[column] = values.replace({"": UNKNOWN, "nan": UNKNOWN, "NaN": UNKNOWN}).str.lower()
    return frame.reset_index(drop=True)


def class_indices(dx):
    """Maps diagnosis names to class indices (positions in `CLASS_NAMES`)."""
    lookup = {name: index for index, name in enumerate(CLASS_NAMES)}
    return np.array([lookup[value] for value in dx], dtype=np.int64)


def stratified_subset(metadata, size, seed):
    """Picks `size` rows with each diagnosis in proportion to its share, at least one of each.

    For smoke runs (`--limit`): whole lesions are not kept together here, because the split that
    follows groups by lesion within whatever subset it is given.
    """
    if size >= len(metadata):
        return metadata
    rng = np.random.default_rng(seed)
    counts = metadata["dx"].value_counts()
    quota = np.maximum(1, np.floor(counts / counts.sum() * size)).astype(int)
    # Hand the rows lost to rounding down to the largest classes.
    shortfall = size - quota.sum()
    for name in counts.index[: max(shortfall, 0)]:
        quota[name] += 1
    chosen = [
        rng.choice(metadata.index[metadata["dx"] == name], min(quota[name], counts[name]), replace=False)
        for name in CLASS_NAMES
        if name in counts.index
    ]
    return metadata.loc[np.sort(np.concatenate(chosen))].reset_index(drop=True)
