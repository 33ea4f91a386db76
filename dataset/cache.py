"""The decoded-image cache: every image decoded and resized once, then memory-mapped.

Decoding 10,015 JPEGs takes seconds; doing it every epoch would make the CPU, not the model,
the limit on training speed. The cache is one uint8 array of shape (images, size, size, 3) in a
`.npy` file, read through a memory map so that only the pages in use occupy memory.

A cache is keyed by the image folders, the image ids and the size. A fingerprint of every source
file (size and modification time) is stored beside it; when a file changes, is added or removed,
the cache no longer matches and is rebuilt.
"""

import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from common import files
from common.errors import DataError, UserError
from dataset.images import first_few, read_image

CACHE_DIR_VARIABLE = "HAM10000_CACHE"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "ham10000-study"
# Bump when `read_image` changes how it resizes, so that old caches are not reused.
DECODER_VERSION = 1
CACHE_DIR_REMEDY = (
    f"pass --set cache_dir=DIR (evaluate: --cache-dir DIR) a writable folder, or set {CACHE_DIR_VARIABLE} to one"
)


@dataclass(frozen=True)
class ImageCache:
    """Decoded images, row i holding `image_ids[i]`."""

    images: np.ndarray  # (n, size, size, 3) uint8, memory-mapped
    image_ids: tuple
    path: Path

    def rows(self, image_ids):
        """Row numbers of the given ids in `images`."""
        lookup = {image_id: row for row, image_id in enumerate(self.image_ids)}
        return np.array([lookup[image_id] for image_id in image_ids], dtype=np.int64)


def default_cache_dir():
    return Path(os.environ.get(CACHE_DIR_VARIABLE) or DEFAULT_CACHE_DIR)


def load_images(image_paths, size, cache_dir=None, drop_unreadable=False, verbose=True):
    """Returns the cache for these images at this size, building it first if needed.

    Args:
        image_paths: a dict from image id to file, in the order the cache rows should have.
        size: the side of the square images.
        cache_dir: where cache files live; default $HAM10000_CACHE or ~/.cache/ham10000-study.
        drop_unreadable: if True, images that cannot be decoded are left out with a warning
            instead of an error.
        verbose: show a progress bar while building.

    Raises:
        DataError: some images cannot be decoded (and `drop_unreadable` is False); the message
            gives the count and the first few files. Nothing is written in that case.
    """
    if not image_paths:
        raise DataError("no images to load: the image list is empty")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    blocking = files.blocking_file(cache_dir)
    if blocking is not None:
        raise DataError(
            f"{blocking}: is a file, not a folder, so the image cache cannot go to {cache_dir} ({CACHE_DIR_REMEDY})"
        )
    image_ids = tuple(image_paths)
    paths = [Path(image_paths[image_id]) for image_id in image_ids]
    key = _cache_key(image_ids, paths, size)
    array_path = cache_dir / f"{key}-{size}px.npy"
    info_path = array_path.with_suffix(".json")
    fingerprint = _fingerprint(paths)

    info = _read_info(info_path)
    images = _open(array_path) if info.get("fingerprint") == fingerprint else None
    if images is None:
        info = _build(paths, image_ids, size, array_path, fingerprint, drop_unreadable, verbose)
        files.write_json(info_path, info)
        images = np.load(array_path, mmap_mode="r")

    unreadable = set(info["unreadable"])
    if not unreadable:
        return ImageCache(images, image_ids, array_path)
    if not drop_unreadable or len(unreadable) == len(image_ids):
        raise _unreadable_error(sorted(unreadable), len(image_ids))
    warnings.warn(f"{_unreadable_summary(sorted(unreadable), len(image_ids))}; leaving them out", stacklevel=2)
    keep = [row for row, image_id in enumerate(image_ids) if image_id not in unreadable]
    # Fancy indexing copies the kept rows into memory: fine for the rare, opt-in path.
    return ImageCache(images[keep], tuple(image_ids[row] for row in keep), array_path)


def _open(array_path):
    """The cache file memory-mapped, or None if it is missing or damaged (e.g. truncated by a full disk)."""
    try:
        return np.load(array_path, mmap_mode="r")
    except (OSError, ValueError):
        return None


def _build(paths, image_ids, size, array_path, fingerprint, drop_unreadable, verbose):
    """Decodes every image into a new cache file; returns the info to store beside it."""
    try:
        files.check_writable(array_path.parent)
    except UserError as error:
        raise DataError(f"{error}; the image cache needs a writable folder ({CACHE_DIR_REMEDY})") from None
    _remove_stale_temporaries(array_path.parent)
    _check_free_space(array_path.parent, len(paths) * size * size * 3)
    if verbose:
        print(f"Building the {size}x{size} image cache of {len(paths)} images in {array_path.parent}")
    # On a terminal a live bar; in a log file one line at the end.
    progress = (
        keras.utils.Progbar(len(paths), unit_name="image", verbose=1 if sys.stdout.isatty() else 2) if verbose else None
    )
    unreadable = []
    with files.atomic_path(array_path) as temporary:
        images = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
        # Pillow releases the GIL while it decodes and resizes, so threads keep every core busy
        # without the start-up cost of processes.
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
            for row, image in enumerate(pool.map(lambda path: _read_or_none(path, size), paths)):
                if image is None:
                    unreadable.append(image_ids[row])
                else:
                    images[row] = image
                if progress is not None and (row % 500 == 499 or row == len(paths) - 1):
                    progress.update(row + 1)
        images.flush()
        del images
        if unreadable and not drop_unreadable:
            # Raised inside `atomic_path`, so the half-useful file is discarded.
            raise _unreadable_error(unreadable, len(paths))
    return {"fingerprint": fingerprint, "size": size, "decoder_version": DECODER_VERSION, "unreadable": unreadable}


def _remove_stale_temporaries(cache_dir):
    """Deletes the half-written cache files of builds whose process has died (killed, out of memory)."""
    for temporary in Path(cache_dir).glob(".*.tmp.npy"):
        owner = re.fullmatch(r"\..*\.(\d+)\.tmp\.npy", temporary.name)
        if owner and not files.process_alive(int(owner.group(1))):
            temporary.unlink(missing_ok=True)


def _check_free_space(cache_dir, needed_bytes):
    free = shutil.disk_usage(cache_dir).free
    # Some room to spare for the rest of the run (models, checkpoints).
    if needed_bytes * 1.1 > free:
        raise DataError(
            f"{cache_dir}: the image cache needs {_size(needed_bytes)} and the disk has {_size(free)} free "
            "(free some space, use a smaller image_size, or a cache_dir on another disk)"
        )


def _size(size_bytes):
    """ "1.2 GB", or "3.4 MB" below a gigabyte (a toy cache would read "0.0 GB")."""
    return f"{size_bytes / 1e9:.1f} GB" if size_bytes >= 1e9 else f"{size_bytes / 1e6:.1f} MB"


def _read_or_none(path, size):
    try:
        return read_image(path, size)
    except DataError:
        return None


def _unreadable_summary(image_ids, total):
    return f"{len(image_ids)} of {total} images cannot be decoded: {first_few(image_ids)}"


def _unreadable_error(image_ids, total):
    if len(image_ids) == total:
        return DataError(f"none of the {total} images can be decoded: {first_few(image_ids)} (are they image files?)")
    return DataError(
        f"{_unreadable_summary(image_ids, total)} (replace the files, or leave them out: --set drop_missing_images=true, evaluate: --drop-missing-images)"
    )


def _cache_key(image_ids, paths, size):
    """Names the cache by what it holds: which images from which folders, at which size."""
    folders = sorted(str(folder.resolve()) for folder in {path.parent for path in paths})
    content = json.dumps([DECODER_VERSION, size, folders, list(image_ids)])
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def _fingerprint(paths):
    """Changes whenever a source file is replaced, edited or touched."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise DataError(f"{path}: image file not found") from None
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def _read_info(info_path):
    try:
        return json.loads(info_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
