"""The metadata encoder of the hybrid head."""

import numpy as np
import pandas as pd
import pytest

from dataset import MetadataEncoder


@pytest.fixture
def train_rows():
    return pd.DataFrame(
        {
            "age": [30.0, 50.0, np.nan, 70.0],
            "sex": ["male", "female", "male", "unknown"],
            "localization": ["back", "face", "back", "trunk"],
        }
    )


def test_fitted_on_training_rows(train_rows):
    encoder = MetadataEncoder.fit(train_rows)
    assert encoder.age_mean == pytest.approx(50.0)
    assert encoder.age_std == pytest.approx(np.std([30.0, 50.0, 70.0]))
    assert encoder.sexes == ("female", "male", "unknown")
    assert encoder.sites == ("back", "face", "trunk", "unknown")
    assert encoder.size == 2 + 3 + 4 == len(encoder.feature_names)


def test_encoding_by_hand(train_rows):
    encoder = MetadataEncoder.fit(train_rows)
    vector = encoder.transform(train_rows.iloc[[0]])[0]
    # age (30 - 50) / 16.33, not missing, male, back
    expected = [-20 / np.std([30.0, 50.0, 70.0]), 0, 0, 1, 0, 1, 0, 0, 0]
    np.testing.assert_allclose(vector, expected, rtol=1e-6)


def test_same_vector_after_save_and_load(train_rows, tmp_path):
    encoder = MetadataEncoder.fit(train_rows)
    encoder.save(tmp_path / "encoder.json")
    reloaded = MetadataEncoder.load(tmp_path / "encoder.json")
    assert reloaded == encoder
    np.testing.assert_array_equal(reloaded.transform(train_rows), encoder.transform(train_rows))


def test_missing_and_unseen_values_encode_as_unknown(train_rows):
    encoder = MetadataEncoder.fit(train_rows)
    new = pd.DataFrame({"age": [np.nan], "sex": ["unknown"], "localization": ["acral"]})
    vector = encoder.transform(new)[0]
    np.testing.assert_array_equal(vector, [0, 1, 0, 0, 1, 0, 0, 0, 1])


def test_rows_without_any_metadata_encode_as_unknown(train_rows):
    encoder = MetadataEncoder.fit(train_rows)
    vectors = encoder.transform(pd.DataFrame({"image_id": ["a", "b"]}))
    np.testing.assert_array_equal(vectors, [[0, 1, 0, 0, 1, 0, 0, 0, 1]] * 2)
