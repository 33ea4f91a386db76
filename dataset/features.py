"""Metadata features for the hybrid head: age, sex and anatomical site as a fixed-length vector.

The encoder is fitted on the training subset only (the age scaling is a statistic of the data,
and the test set must not inform it) and saved with each run, so that evaluation, also on an
external test set, encodes metadata exactly as training did.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common import files
from dataset.metadata import UNKNOWN


@dataclass(frozen=True)
class MetadataEncoder:
    """Encodes age (scaled, plus a missing flag), sex and site (one-hot, with "unknown").

    Build one with `MetadataEncoder.fit(train_rows)`; a value not seen in training, or a column
    absent from the table, encodes as "unknown".

    Example:
        encoder = MetadataEncoder.fit(metadata[split["subset"] == "train"])
        features = encoder.transform(metadata)  # (n, encoder.size) float32
        encoder.save(run_dir / "metadata_encoder.json")
    """

    age_mean: float
    age_std: float
    sexes: tuple
    sites: tuple

    @classmethod
    def fit(cls, rows):
        age = rows["age"].dropna() if "age" in rows.columns else []
        # With no ages at all (an unusual training set), scaling is the identity.
        age_mean = float(np.mean(age)) if len(age) else 0.0
        age_std = float(np.std(age)) if len(age) > 1 and np.std(age) > 0 else 1.0
        return cls(age_mean, age_std, _categories(rows, "sex"), _categories(rows, "localization"))

    @property
    def size(self):
        return 2 + len(self.sexes) + len(self.sites)

    @property
    def feature_names(self):
        return ["age_scaled", "age_missing"] + [f"sex={v}" for v in self.sexes] + [f"site={v}" for v in self.sites]

    def transform(self, rows):
        """Returns a (len(rows), size) float32 array."""
        count = len(rows)
        age = rows["age"].to_numpy(dtype=np.float64) if "age" in rows.columns else np.full(count, np.nan)
        missing = np.isnan(age)
        # A missing age sits at the training mean, so the flag alone carries the information.
        scaled = np.where(missing, 0.0, (age - self.age_mean) / self.age_std)
        return np.column_stack(
            [scaled, missing, _one_hot(rows, "sex", self.sexes), _one_hot(rows, "localization", self.sites)]
        ).astype(np.float32)

    def save(self, path):
        files.write_json(path, asdict(self))

    @classmethod
    def load(cls, path):
        data = json.loads(Path(path).read_text())
        return cls(data["age_mean"], data["age_std"], tuple(data["sexes"]), tuple(data["sites"]))


def _categories(rows, column):
    values = set(rows[column]) if column in rows.columns else set()
    return tuple(sorted(values - {UNKNOWN})) + (UNKNOWN,)


def _one_hot(rows, column, categories):
    values = rows[column].to_numpy() if column in rows.columns else np.full(len(rows), UNKNOWN)
    values = np.where(np.isin(values, categories), values, UNKNOWN)
    return (values[:, None] == np.array(categories)[None, :]).astype(np.float32)
