"""Shared fixtures: the real HAM10000 copy, a synthetic HAM10000-shaped folder, a toy copy of the real one,
an isolated image cache, and a toy study."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dataset import find_data_dir, load_metadata
from dataset.metadata import METADATA_FILENAME, stratified_subset
from pipeline import run_experiment

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"
TOY_IMAGES = 80


def pytest_collection_modifyitems(items):
    """Under pytest-xdist (the README's test command runs two workers), the tests that read the toy
    study share one worker, so that its 4 trainings run once rather than once per worker."""
    for item in items:
        if "study" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("study"))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Caches built by tests go to a temporary folder, never to ~/.cache.

    Session-scoped, so that it is in place before the session fixtures that train toy runs.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HAM10000_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="session")
def ham_dir():
    """The full HAM10000 copy beside the checkout (../shared/ham10000), as CI has it."""
    return find_data_dir()


@pytest.fixture(scope="session")
def ham_metadata(ham_dir):
    return load_metadata(ham_dir / METADATA_FILENAME)


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory):
    """A HAM10000-shaped folder of generated images (every class present), read-only by convention.

    It needs no copy of HAM10000: the tests that train, evaluate, predict and serve at toy size run
    on it anywhere. The tests of what only the real data can show use `ham_dir` or `real_toy_dir`.
    """
    return make_synthetic_ham10000(tmp_path_factory.mktemp("synthetic_ham10000"))


# The class mix of a stratified 80 of HAM10000 (nv two-thirds, one df and one vasc).
SYNTHETIC_COUNTS = {"nv": 54, "bkl": 9, "mel": 9, "bcc": 4, "akiec": 2, "df": 1, "vasc": 1}
SYNTHETIC_COLOURS = {
    "akiec": (170, 90, 80),
    "bcc": (200, 140, 150),
    "bkl": (140, 100, 60),
    "df": (160, 110, 90),
    "mel": (60, 40, 40),
    "nv": (120, 80, 60),
    "vasc": (180, 40, 60),
}


def make_synthetic_ham10000(root, seed=0):
    """Writes HAM10000's layout into `root`: `HAM10000_metadata.csv` with its seven columns and
    `images/ISIC_*.jpg` (600 x 450, a class-coloured lesion on skin with noise).

    Some lesions have two images, as in HAM10000; a few rows have no age or an "unknown" sex or
    site, as HAM10000 has.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows, image_number, lesion_number = [], 24306, 0
    sites = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "unknown")
    for dx, count in SYNTHETIC_COUNTS.items():
        for index in range(count):
            if index % 3 != 1:  # every third image is a second photograph of the lesion before it
                lesion_number += 1
                lesion = {
                    "lesion_id": f"HAM_{lesion_number:07d}",
                    "dx": dx,
                    "dx_type": "histo" if dx in ("mel", "bcc", "akiec") else "follow_up",
                    "age": "" if lesion_number % 17 == 0 else f"{float(rng.integers(4, 18) * 5):.1f}",
                    "sex": "unknown" if lesion_number % 9 == 0 else ("male", "female")[lesion_number % 2],
                    "localization": sites[lesion_number % len(sites)],
                }
            image_id = f"ISIC_{image_number:07d}"
            image_number += 1
            rows.append({"image_id": image_id, **lesion})
            _write_lesion_image(root / "images" / f"{image_id}.jpg", SYNTHETIC_COLOURS[dx], rng)
    columns = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    pd.DataFrame(rows, columns=columns).to_csv(root / METADATA_FILENAME, index=False)
    return root


def _write_lesion_image(path, colour, rng):
    height, width = 450, 600
    y, x = np.mgrid[:height, :width]
    centre_y, centre_x = rng.uniform(150, 300), rng.uniform(200, 400)
    radius_y, radius_x = rng.uniform(60, 140), rng.uniform(80, 180)
    inside = ((y - centre_y) / radius_y) ** 2 + ((x - centre_x) / radius_x) ** 2 <= 1
    image = np.where(inside[..., None], np.array(colour), np.array((225, 180, 160)))
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype("uint8")
    Image.fromarray(image).save(path, quality=90)


@pytest.fixture(scope="session")
def real_toy_dir(ham_dir, ham_metadata, tmp_path_factory):
    """A HAM10000-shaped folder of 80 real images (every class present), read-only by convention."""
    root = tmp_path_factory.mktemp("toy_ham10000")
    rows = stratified_subset(ham_metadata, TOY_IMAGES, seed=0)
    (root / "images").mkdir()
    for image_id in rows["image_id"]:
        shutil.copyfile(ham_dir / "images" / f"{image_id}.jpg", root / "images" / f"{image_id}.jpg")
    original = (ham_dir / METADATA_FILENAME).read_text().splitlines()
    header, body = original[0], original[1:]
    wanted = set(rows["image_id"])
    kept = [line for line in body if line.split(",")[1] in wanted]
    (root / METADATA_FILENAME).write_text("\n".join([header, *kept]) + "\n")
    return root


@pytest.fixture(scope="session")
def study(real_toy_dir, tmp_path_factory):
    """`--model all` once on real images: the four configurations and their comparison, at toy size.

    Real images: the tests of the trained runs compare answers across inputs (the served model must
    tell ten requests apart), which a toy model trained on generated images does not always do.
    """
    output = tmp_path_factory.mktemp("study")
    run_experiment("all", TINY_CONFIG, {"data_dir": str(real_toy_dir), "output_dir": str(output)})
    return output


def study_run(study, name):
    """The folder of one of the study's runs: "cnn", "densenet", "vgg16" or "vgg16-meta"."""
    return next(run for run in (study / "runs").iterdir() if run.name.split("-", 2)[2] == name)


def run_main(*arguments):
    """`python main.py ARGUMENTS` in this process; its exit status."""
    import main  # only the tests of the command line need it (it sets up the console when imported)

    return main.main([str(argument) for argument in arguments])


def copy_toy_dir(toy_dir, destination):
    """A private, writable copy of the toy folder, for tests that damage it."""
    return Path(shutil.copytree(toy_dir, destination))
