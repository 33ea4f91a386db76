"""Finding the HAM10000 folder and its images, and decoding an image to the model's input size."""

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import DataError
from dataset.metadata import METADATA_FILENAME

DATA_DIR_VARIABLE = "HAM10000_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent
# Searched in order when neither --data-dir nor $HAM10000_DIR is given. The second is where this
# project's machines and CI keep the shared copy, beside the checkout.
DEFAULT_DATA_DIRS = (REPO_ROOT / "data" / "ham10000", REPO_ROOT.parent / "shared" / "ham10000")

# The downsampled copy keeps every image in one folder; the original Dataverse release splits
# them over two. A folder of loose images (an external test set) is read as well.
IMAGE_FOLDERS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", ".")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def find_data_dir(data_dir=None):
    """Resolves the HAM10000 folder: the argument, then $HAM10000_DIR, then the default places.

    Raises:
        DataError: the folder given does not exist or holds no HAM10000 metadata and images, or
            none was given and none of the default places holds the data.
    """
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_VARIABLE) or None
    if data_dir is not None:
        return check_data_dir(data_dir)
    for candidate in DEFAULT_DATA_DIRS:
        if (candidate / METADATA_FILENAME).is_file():
            return check_data_dir(candidate)
    searched = ", ".join(str(path) for path in DEFAULT_DATA_DIRS)
    raise DataError(
        f"HAM10000 not found (searched {searched}): pass --data-dir DIR or set "
        f"{DATA_DIR_VARIABLE}; README.md, 'Getting the data', says where to download it"
    )


def check_data_dir(data_dir):
    """Checks that a folder holds HAM10000's metadata file and at least one image folder."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found (pass --data-dir with the HAM10000 folder)")
    if not (data_dir / METADATA_FILENAME).is_file():
        raise DataError(
            f"{data_dir} is not a HAM10000 folder: it has no {METADATA_FILENAME} "
            "(expected that file beside images/ or HAM10000_images_part_1/ and _part_2/)"
        )
    if not any((data_dir / folder).is_dir() for folder in IMAGE_FOLDERS[:-1]):
        raise DataError(
            f"{data_dir} is not a HAM10000 folder: it has no images/ or HAM10000_images_part_1/ "
            "folder (unzip the release's image archives there)"
        )
    return data_dir.resolve()


def index_images(image_dir):
    """Maps image id (file name without suffix) to path for every image in the known folders.

    An id found in two folders (the release's two parts) is the first folder's file; where the
    files differ, a warning names the ids, since which one is the image cannot be told.
    """
    image_dir = Path(image_dir)
    found, conflicting = {}, []
    for folder in IMAGE_FOLDERS:
        folder_path = image_dir / folder
        if not folder_path.is_dir():
            continue
        with os.scandir(folder_path) as entries:
            for entry in entries:
                stem, suffix = os.path.splitext(entry.name)
                if suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                    kept = found.setdefault(stem, Path(entry.path))
                    if kept != Path(entry.path) and not _same_content(kept, Path(entry.path)):
                        conflicting.append((stem, kept, Path(entry.path)))
    if conflicting:
        _, kept, other = conflicting[0]
        warnings.warn(
            f"{image_dir}: two folders hold different images under the same name "
            f"({len(conflicting)}: {first_few(sorted(stem for stem, _, _ in conflicting))}); using the first found "
            f"({kept.parent.name}/ over {other.parent.name}/ for the first): delete the wrong copies",
            stacklevel=2,
        )
    return found


def _same_content(first, second):
    if first.stat().st_size != second.stat().st_size:
        return False
    return first.read_bytes() == second.read_bytes()


def locate_images(image_ids, image_dir, drop_missing=False):
    """Finds the file of every image id.

    Args:
        image_ids: the ids to find (`ISIC_0027419`, ...).
        image_dir: the data folder (flat `images/`, the release's two part folders, or loose files).
        drop_missing: if True, missing images are left out with a warning instead of an error.

    Returns:
        A dict from image id to path, in the order of `image_ids`, without the missing ones.

    Raises:
        DataError: some images are missing (and `drop_missing` is False); the message gives the
            count and the first few ids.
    """
    available = index_images(image_dir)
    missing = [image_id for image_id in image_ids if image_id not in available]
    if missing:
        summary = f"{len(missing)} of {len(image_ids)} images not found in {image_dir}: {first_few(missing)}"
        if not drop_missing:
            raise DataError(
                f"{summary} (to leave them out: --set drop_missing_images=true, evaluate: --drop-missing-images)"
            )
        warnings.warn(f"{summary}; leaving them out", stacklevel=2)
    return {image_id: available[image_id] for image_id in image_ids if image_id in available}


def read_image(path, size):
    """Decodes an image to a (size, size, 3) uint8 RGB array.

    The whole image is resized to a square, not cropped: a lesion can reach the edge of the
    frame, and training and evaluation both go through this function, so every image, of any
    size or aspect, reaches the model the same way.

    Raises:
        DataError: the file cannot be decoded.
    """
    try:
        with Image.open(path) as image:
            # For JPEG, decode straight to the smallest scale (1/2, 1/4, 1/8) still at least as
            # large as the target: several times faster on the full-resolution release.
            image.draft("RGB", (size, size))
            image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot read image ({error})") from None


def first_few(items, count=5):
    """ "a, b, c, d, e, ..." for messages that name a few of many items."""
    shown = ", ".join(str(item) for item in items[:count])
    return shown + (", ..." if len(items) > count else "")
