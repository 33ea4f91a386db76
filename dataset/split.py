"""The train / validation / test split: stratified by diagnosis, grouped by lesion, seeded.

HAM10000 has 10,015 images of 7,470 lesions; a lesion photographed twice must not sit on both
sides of the split, or the test score measures recall of a seen lesion, not diagnosis.
"""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from common import files
from common.errors import DataError
from common.tables import line_number, read_csv, require_columns
from dataset.metadata import CLASS_NAMES

SUBSETS = ("train", "val", "test")
SPLIT_COLUMNS = ("image_id", "lesion_id", "dx", "subset")
# Optional: a split made for K-fold studies numbers the non-test images' folds 0 to K-1 (test: -1).
FOLD_COLUMN = "fold"
TEST_FOLD = -1
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)


def make_split(metadata, fractions=DEFAULT_FRACTIONS, seed=0):
    """Assigns every image to train, val or test, keeping each lesion's images together.

    Each diagnosis is split on its own, so every subset gets its share of every class: the
    lesions of one diagnosis are shuffled (seeded), laid end to end by image count, and cut at
    the test and validation fractions; a lesion goes where the middle of its images falls.

    Args:
        metadata: a table with `image_id, lesion_id, dx` (from `load_metadata`).
        fractions: the train, val and test shares; positive, summing to 1.
        seed: fixes the split; the same seed and metadata always give the same split.

    Returns:
        A DataFrame with columns `image_id, lesion_id, dx, subset`, in the metadata's row order.
    """
    train_share, val_share, test_share = check_fractions(fractions)
    rng = np.random.default_rng(seed)
    # A lesion with images of several diagnoses (none in HAM10000) is placed by its most common.
    pairs = metadata.groupby(["lesion_id", "dx"]).size().rename("images").reset_index()
    pairs = pairs.sort_values(["lesion_id", "images", "dx"], ascending=[True, False, True], kind="stable")
    lesion_dx = pairs.drop_duplicates("lesion_id").set_index("lesion_id")["dx"]
    lesion_sizes = metadata.groupby("lesion_id").size()

    lesion_subset = {}
    for name in CLASS_NAMES:
        lesions = np.sort(lesion_dx.index[lesion_dx == name].to_numpy())
        if len(lesions) == 0:
            continue
        lesions = rng.permutation(lesions)
        sizes = lesion_sizes.loc[lesions].to_numpy()
        middles = np.cumsum(sizes) - sizes / 2
        total = sizes.sum()
        subsets = np.where(
            middles <= test_share * total, "test", np.where(middles <= (test_share + val_share) * total, "val", "train")
        )
        lesion_subset.update(zip(lesions, subsets))

    split = metadata.loc[:, ["image_id", "lesion_id", "dx"]].copy()
    split["subset"] = split["lesion_id"].map(lesion_subset)
    return split.reset_index(drop=True)


def check_fractions(fractions):
    """Returns (train, val, test) shares, or raises ValueError saying what is wrong with them."""
    fractions = tuple(float(value) for value in fractions)
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"split fractions must be three positive numbers (train, val, test) summing to 1; got {fractions}"
        )
    return fractions


def assign_folds(split, folds, seed=0):
    """Numbers the non-test images' folds for K-fold cross-validation; the test subset stays as it is.

    scikit-learn's `StratifiedGroupKFold`: a lesion's images share a fold (groups = lesion_id),
    and every fold gets its share of every diagnosis as far as the lesions allow (y = dx);
    the lesions are shuffled with `seed`.

    Args:
        split: a split (`make_split`, `load_split`); its train and val images are divided.
        folds: K, at least 2.
        seed: fixes the assignment.

    Returns:
        The split with a `fold` column: 0 to K-1, and -1 for the test images.

    Raises:
        DataError: K below 2, or more folds than lesions outside the test subset.
    """
    rest = (split["subset"] != "test").to_numpy()
    lesions = split.loc[rest, "lesion_id"].nunique()
    if folds < 2 or folds > lesions:
        raise DataError(f"--folds must be between 2 and the {lesions} lesions outside the test subset; got {folds}")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold = np.full(len(split), TEST_FOLD)
    positions = np.flatnonzero(rest)
    with warnings.catch_warnings():
        # A class with fewer lesions than folds (a toy subset's single dermatofibroma) cannot be in every fold.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        parts = splitter.split(positions, split["dx"].to_numpy()[rest], split["lesion_id"].to_numpy()[rest])
        for number, (_, held_out) in enumerate(parts):
            fold[positions[held_out]] = number
    return split.assign(**{FOLD_COLUMN: fold})


def fold_subsets(split, fold):
    """The split as fold `fold`'s run uses it: that fold is "val", the other folds "train", test unchanged.

    Raises:
        DataError: the split has no folds, or no fold `fold`.
    """
    if FOLD_COLUMN not in split:
        raise DataError("fold needs a split with a fold column (made by --folds K; pass it with --split)")
    numbers = sorted(set(split[FOLD_COLUMN]) - {TEST_FOLD})
    if fold not in numbers:
        raise DataError(f"the split has folds {', '.join(map(str, numbers))}; there is no fold {fold}")
    subsets = np.where(split[FOLD_COLUMN] == TEST_FOLD, "test", np.where(split[FOLD_COLUMN] == fold, "val", "train"))
    return split.assign(subset=subsets)


def save_split(split, path):
    """Writes `split.csv`: `SPLIT_COLUMNS`, and `fold` where the split has folds."""
    columns = [*SPLIT_COLUMNS, FOLD_COLUMN] if FOLD_COLUMN in split else list(SPLIT_COLUMNS)
    files.write_csv(path, split.loc[:, columns])


def load_split(path, metadata=None):
    """Reads a `split.csv` written by `save_split`, for reuse with another model or run.

    Args:
        path: the split file.
        metadata: if given, the split must describe exactly these images (by `image_id`), with
            the same lesions and diagnoses; it is returned in the metadata's row order.

    Returns:
        The split, with its `fold` column if it has one (as integers).

    Raises:
        DataError: the file is malformed, puts a lesion on two sides (or in two folds), or does
            not match the metadata.
    """
    path = Path(path)
    split = read_csv(path, "split file not found")
    require_columns(split, SPLIT_COLUMNS, path)
    columns = list(SPLIT_COLUMNS)
    if FOLD_COLUMN in split:
        split[FOLD_COLUMN] = check_folds(split, path)
        columns.append(FOLD_COLUMN)
    bad_subset = ~split["subset"].isin(SUBSETS)
    if bad_subset.any():
        raise DataError(
            f"{path}, line {line_number(np.flatnonzero(bad_subset)[0])}: unknown subset "
            f"{split['subset'][bad_subset].iloc[0]!r} (expected one of {', '.join(SUBSETS)})"
        )
    leaked = lesions_on_several_sides(split)
    if leaked:
        raise DataError(f"{path}: {len(leaked)} lesions are in more than one subset, e.g. {leaked[0]}")
    if metadata is None:
        return split.loc[:, columns]

    by_id = split.set_index("image_id")
    unknown = sorted(set(metadata["image_id"]) - set(by_id.index))
    extra = sorted(set(by_id.index) - set(metadata["image_id"]))
    if unknown or extra:
        raise DataError(
            f"{path} does not match the metadata: {len(unknown)} images absent from the split, "
            f"{len(extra)} images absent from the metadata (was it made with another --limit or data folder?)"
        )
    aligned = by_id.loc[metadata["image_id"]]
    changed = (aligned["dx"].to_numpy() != metadata["dx"].to_numpy()) | (
        aligned["lesion_id"].to_numpy() != metadata["lesion_id"].to_numpy()
    )
    if changed.any():
        image_id = metadata["image_id"].to_numpy()[changed][0]
        raise DataError(f"{path} does not match the metadata: image {image_id} has another dx or lesion_id")
    return aligned.reset_index().loc[:, columns]


def check_folds(split, path):
    """The split's `fold` column as integers; DataError unless the test images, and only they, have
    fold -1 and every lesion sits in one fold."""
    folds = pd.to_numeric(split[FOLD_COLUMN], errors="coerce")
    bad = (
        folds.isna()
        | (folds != folds.round())
        | (folds < TEST_FOLD)
        | ((folds == TEST_FOLD) != (split["subset"] == "test"))
    )
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}, line {line_number(row)}: fold {split[FOLD_COLUMN].iloc[row]!r} for a {split['subset'].iloc[row]} image "
            f"(expected -1 for test images, 0 to K-1 for the others)"
        )
    folds = folds.astype(np.int64)
    spread = folds.groupby(split["lesion_id"]).nunique()
    if (spread > 1).any():
        raise DataError(
            f"{path}: {(spread > 1).sum()} lesions are in more than one fold, e.g. {spread.index[spread > 1][0]}"
        )
    return folds


def lesions_on_several_sides(split):
    """The lesion ids that have images in more than one subset (none, in a valid split)."""
    sides = split.groupby("lesion_id")["subset"].nunique()
    return sorted(sides.index[sides > 1])


def split_summary(split):
    """Images per class and subset, with totals: the table a report shows for the split."""
    table = pd.crosstab(split["dx"], split["subset"]).reindex(
        index=list(CLASS_NAMES), columns=list(SUBSETS), fill_value=0
    )
    table.loc["total"] = table.sum()
    return table
