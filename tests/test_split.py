"""The lesion-grouped, stratified, seeded split."""

import pytest

from common.errors import DataError
from dataset import load_split, make_split, save_split
from dataset.split import lesions_on_several_sides


@pytest.fixture(scope="module")
def split(ham_metadata):
    return make_split(ham_metadata, seed=0)


def test_no_lesion_on_two_sides(split):
    assert lesions_on_several_sides(split) == []
    sides = split.groupby("lesion_id")["subset"].nunique()
    assert (sides == 1).all()


def test_every_image_assigned_once_in_metadata_order(split, ham_metadata):
    assert split["image_id"].tolist() == ham_metadata["image_id"].tolist()
    assert set(split["subset"]) == {"train", "val", "test"}


def test_subset_sizes_follow_fractions(split):
    shares = split["subset"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.70, abs=0.01)
    assert shares["val"] == pytest.approx(0.15, abs=0.01)
    assert shares["test"] == pytest.approx(0.15, abs=0.01)


def test_class_shares_within_two_points_in_every_subset(split):
    overall = split["dx"].value_counts(normalize=True)
    for subset in ("train", "val", "test"):
        shares = split.loc[split["subset"] == subset, "dx"].value_counts(normalize=True)
        assert (shares.reindex(overall.index, fill_value=0) - overall).abs().max() < 0.02, subset


def test_same_seed_same_split_other_seed_other_split(ham_metadata, split):
    assert make_split(ham_metadata, seed=0).equals(split)
    other = make_split(ham_metadata, seed=1)
    assert (other["subset"] != split["subset"]).mean() > 0.1


def test_save_and_load_round_trip(tmp_path, split, ham_metadata):
    path = tmp_path / "split.csv"
    save_split(split, path)
    assert load_split(path, ham_metadata).equals(split)


def test_load_refuses_a_split_that_leaks(tmp_path, split):
    leaking = split.copy()
    lesion = leaking.loc[leaking["lesion_id"].duplicated(keep=False), "lesion_id"].iloc[0]
    rows = leaking.index[leaking["lesion_id"] == lesion]
    leaking.loc[rows[0], "subset"], leaking.loc[rows[1], "subset"] = "train", "test"
    save_split(leaking, tmp_path / "split.csv")
    with pytest.raises(DataError, match="lesions are in more than one subset"):
        load_split(tmp_path / "split.csv")


def test_load_refuses_a_split_of_other_images(tmp_path, split, ham_metadata):
    save_split(split.iloc[:-5], tmp_path / "split.csv")
    with pytest.raises(DataError, match="does not match the metadata: 5 images absent from the split"):
        load_split(tmp_path / "split.csv", ham_metadata)


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.2), (0.7, 0.3, 0.0), (1.0, 0.0)])
def test_bad_fractions(ham_metadata, fractions):
    with pytest.raises(ValueError, match="split fractions must be three positive numbers"):
        make_split(ham_metadata, fractions)
