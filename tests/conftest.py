"""Shared fixtures: the real HAM10000 copy, a toy copy of it, an isolated image cache, and a toy study."""

import shutil
from pathlib import Path

import pytest

import main
from dataset import find_data_dir, load_metadata
from dataset.metadata import METADATA_FILENAME, stratified_subset

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"
TOY_IMAGES = 80


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
def toy_dir(ham_dir, ham_metadata, tmp_path_factory):
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
def study(toy_dir, tmp_path_factory):
    """`--model all` once: the four configurations and their comparison, at toy size."""
    output = tmp_path_factory.mktemp("study")
    assert run_main("--model", "all", "--config", TINY_CONFIG, "--data-dir", toy_dir, "--output-dir", output) == 0
    return output


def study_run(study, name):
    """The folder of one of the study's runs: "cnn", "densenet", "vgg16" or "vgg16-meta"."""
    return next(run for run in (study / "runs").iterdir() if run.name.split("-", 2)[2] == name)


def run_main(*arguments):
    return main.main([str(argument) for argument in arguments])


def copy_toy_dir(toy_dir, destination):
    """A private, writable copy of the toy folder, for tests that damage it."""
    return Path(shutil.copytree(toy_dir, destination))
