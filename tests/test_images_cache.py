"""Finding the data, decoding images, and the memory-mapped image cache."""

import os
import shutil

import numpy as np
import pytest
from conftest import copy_toy_dir
from PIL import Image

from common.errors import DataError
from dataset import find_data_dir, load_images, locate_images, prepare_data, read_image
from dataset.metadata import METADATA_FILENAME


def toy_paths(toy_dir):
    ids = sorted(path.stem for path in (toy_dir / "images").glob("*.jpg"))
    return locate_images(ids, toy_dir)


def test_data_dir_resolution_order(toy_dir, ham_dir, monkeypatch):
    monkeypatch.setenv("HAM10000_DIR", str(toy_dir))
    assert find_data_dir() == toy_dir.resolve()
    assert find_data_dir(ham_dir) == ham_dir.resolve()
    monkeypatch.delenv("HAM10000_DIR")
    # With neither, the shared copy beside the checkout is found.
    assert find_data_dir() == ham_dir.resolve()


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataError, match=r"nope: data folder not found \(pass --data-dir"):
        find_data_dir(tmp_path / "nope")


def test_folder_that_is_not_ham10000(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=f"is not a HAM10000 folder: it has no {METADATA_FILENAME}"):
        find_data_dir(tmp_path)


def test_original_release_layout_with_two_part_folders(toy_dir, tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    shutil.copyfile(toy_dir / METADATA_FILENAME, release / METADATA_FILENAME)
    images = sorted((toy_dir / "images").glob("*.jpg"))
    for part, chunk in (("HAM10000_images_part_1", images[:40]), ("HAM10000_images_part_2", images[40:])):
        (release / part).mkdir()
        for image in chunk:
            shutil.copyfile(image, release / part / image.name)
    found = locate_images([image.stem for image in images], find_data_dir(release))
    assert len(found) == len(images)
    assert {path.parent.name for path in found.values()} == {"HAM10000_images_part_1", "HAM10000_images_part_2"}


def test_missing_images_error_gives_count_and_first_ids(toy_dir):
    with pytest.raises(DataError) as error:
        locate_images(["ISIC_missing1", "ISIC_missing2", *toy_paths(toy_dir)], toy_dir)
    assert "2 of 82 images not found" in str(error.value)
    assert "ISIC_missing1, ISIC_missing2" in str(error.value)
    assert "--drop-missing-images" in str(error.value)


def test_missing_images_dropped_with_a_warning_when_asked(toy_dir):
    with pytest.warns(UserWarning, match="1 of 81 images not found"):
        found = locate_images(["ISIC_missing", *toy_paths(toy_dir)], toy_dir, drop_missing=True)
    assert "ISIC_missing" not in found and len(found) == 80


def test_read_image_any_size_to_square_uint8(tmp_path):
    Image.new("RGB", (600, 450), (200, 30, 10)).save(tmp_path / "big.jpg")
    image = read_image(tmp_path / "big.jpg", 32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert abs(int(image[..., 0].mean()) - 200) < 5


def test_cache_round_trip_equals_direct_decode(toy_dir, tmp_path):
    paths = toy_paths(toy_dir)
    cache = load_images(paths, 32, cache_dir=tmp_path, verbose=False)
    assert isinstance(cache.images, np.memmap)
    assert cache.images.shape == (80, 32, 32, 3)
    for row in (0, 17, 79):
        image_id = cache.image_ids[row]
        np.testing.assert_array_equal(cache.images[row], read_image(paths[image_id], 32))


def test_cache_is_reused_until_a_source_file_changes(toy_dir, tmp_path):
    data = copy_toy_dir(toy_dir, tmp_path / "data")
    paths = toy_paths(data)
    first = load_images(paths, 32, cache_dir=tmp_path / "cache", verbose=False)
    built = os.stat(first.path).st_mtime_ns
    assert os.stat(load_images(paths, 32, cache_dir=tmp_path / "cache", verbose=False).path).st_mtime_ns == built

    changed_id = first.image_ids[3]
    Image.new("RGB", (200, 150), (0, 255, 0)).save(paths[changed_id])
    rebuilt = load_images(paths, 32, cache_dir=tmp_path / "cache", verbose=False)
    np.testing.assert_array_equal(rebuilt.images[3], read_image(paths[changed_id], 32))
    assert rebuilt.images[3][..., 1].mean() > 250


def test_corrupt_image_fails_and_writes_no_cache(toy_dir, tmp_path):
    data = copy_toy_dir(toy_dir, tmp_path / "data")
    paths = toy_paths(data)
    broken = sorted(paths)[5]
    paths[broken].write_bytes(paths[broken].read_bytes()[:300])  # a truncated JPEG
    with pytest.raises(DataError) as error:
        load_images(paths, 32, cache_dir=tmp_path / "cache", verbose=False)
    assert f"1 of 80 images cannot be decoded: {broken}" in str(error.value)
    assert list((tmp_path / "cache").glob("*")) == []


def test_corrupt_image_dropped_when_asked(toy_dir, tmp_path):
    data = copy_toy_dir(toy_dir, tmp_path / "data")
    paths = toy_paths(data)
    broken = sorted(paths)[5]
    paths[broken].write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="1 of 80 images cannot be decoded"):
        cache = load_images(paths, 32, cache_dir=tmp_path / "cache", drop_unreadable=True, verbose=False)
    assert broken not in cache.image_ids and len(cache.images) == 79


def test_prepare_data_drops_unreadable_images_from_the_split(toy_dir, tmp_path):
    data_dir = copy_toy_dir(toy_dir, tmp_path / "data")
    broken = sorted((data_dir / "images").glob("*.jpg"))[0]
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot be decoded"):
        prepare_data(data_dir, image_size=32, verbose=False)
    with pytest.warns(UserWarning):
        data = prepare_data(data_dir, image_size=32, drop_missing_images=True, verbose=False)
    assert broken.stem not in set(data.split["image_id"]) and len(data.split) == 79
