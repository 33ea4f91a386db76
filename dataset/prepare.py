"""The whole data stage in one call: metadata -> split -> image cache -> sequences.

    data = prepare_data(image_size=128, seed=0)
    train, val, test = data.sequence("train", ...), data.sequence("val"), data.sequence("test")

This is what `main.py` runs, and what a notebook runs to get the same data without the
command line.
"""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from common.errors import DataError
from dataset.cache import ImageCache, load_images
from dataset.features import MetadataEncoder
from dataset.images import find_data_dir, locate_images
from dataset.metadata import METADATA_FILENAME, class_indices, load_metadata, stratified_subset
from dataset.sampling import Balance
from dataset.sequence import evaluation_sequence, training_sequence
from dataset.split import DEFAULT_FRACTIONS, fold_subsets, load_split, make_split


@dataclass
class PreparedData:
    """HAM10000 split, decoded and ready to batch.

    Attributes:
        data_dir: the folder the data came from.
        metadata: one row per usable image (aligned with `split`).
        split: `image_id, lesion_id, dx, subset` for the same rows.
        cache: the decoded images; `cache.rows(ids)` finds an image's row.
        encoder: the metadata encoder fitted on the training subset.
    """

    data_dir: Path
    metadata: pd.DataFrame
    split: pd.DataFrame
    cache: ImageCache
    encoder: MetadataEncoder

    def subset(self, name):
        """The rows of one subset: (metadata rows, cache rows, class indices)."""
        mask = (self.split["subset"] == name).to_numpy()
        rows = self.metadata[mask]
        return rows, self.cache.rows(rows["image_id"]), class_indices(rows["dx"])

    def sequence(
        self,
        name,
        *,
        batch_size=32,
        with_metadata=False,
        balance=None,
        augment=True,
        corruption=None,
        mixup=0.0,
        cutmix=0.0,
        seed=0,
        epoch=0,
        workers=2,
    ):
        """A batch sequence of one subset.

        "train" is resampled with `balance`, shuffled and (if `augment`) augmented every epoch,
        corrupted at random by `corruption` (a `CorruptionAugmentation`, or None), and mixed with `mixup` and `cutmix` (`dataset.augment.mix_batch`);
        "val" and "test" are never resampled, shuffled nor augmented, whatever is passed.
        """
        rows, cache_rows, labels = self.subset(name)
        features = self.encoder.transform(rows) if with_metadata else None
        if name == "train":
            return training_sequence(
                self.cache.images,
                cache_rows,
                labels,
                metadata=features,
                batch_size=batch_size,
                balance=balance or Balance("none"),
                augment=augment,
                corruption=corruption,
                mixup=mixup,
                cutmix=cutmix,
                seed=seed,
                epoch=epoch,
                workers=workers,
            )
        return evaluation_sequence(
            self.cache.images, cache_rows, labels, metadata=features, batch_size=batch_size, workers=workers
        )


def prepare_data(
    data_dir=None,
    *,
    image_size=128,
    seed=0,
    split_file=None,
    fold=None,
    split_fractions=DEFAULT_FRACTIONS,
    limit=None,
    drop_missing_images=False,
    cache_dir=None,
    verbose=True,
):
    """Loads HAM10000, splits it, and decodes its images into the cache.

    The split depends on the metadata and the seed alone (or is read from `split_file`), never
    on which image files happen to be readable; images that are missing or cannot be decoded
    raise an error, or, with `drop_missing_images`, leave the split with a warning.

    Args:
        data_dir: the HAM10000 folder; default $HAM10000_DIR, then `find_data_dir`'s defaults.
        image_size: side of the decoded square images.
        seed: fixes the split (and the `limit` subset).
        split_file: a `split.csv` to reuse instead of making a new split; with `limit`, its
            images are the subset (a study's runs of other seeds use their first run's split).
        fold: with a `split_file` that has folds: validate on this fold, train on the others.
        split_fractions: train, val and test shares for a new split.
        limit: keep a stratified subset of this many images (for smoke runs).
        drop_missing_images: leave out missing or unreadable images instead of failing.
        cache_dir: where decoded images are cached.
        verbose: show a progress bar while the cache builds.
    """
    data_dir = find_data_dir(data_dir)
    metadata = load_metadata(data_dir / METADATA_FILENAME)
    if split_file and limit is not None:
        # The subset the split was made from, whichever seed this run has.
        named = load_split(split_file)["image_id"]
        metadata = metadata[metadata["image_id"].isin(named)].reset_index(drop=True)
    elif limit is not None:
        metadata = stratified_subset(metadata, limit, seed)
    split = load_split(split_file, metadata) if split_file else make_split(metadata, split_fractions, seed)
    if fold is not None:
        split = fold_subsets(split, fold)

    paths = locate_images(metadata["image_id"].tolist(), data_dir, drop_missing=drop_missing_images)
    cache = load_images(paths, image_size, cache_dir=cache_dir, drop_unreadable=drop_missing_images, verbose=verbose)
    # Missing and unreadable images were left out with a warning (or raised an error) above.
    kept = metadata["image_id"].isin(cache.image_ids).to_numpy()
    left_out = f" once the {(~kept).sum():,} missing or unreadable images are left out" if not kept.all() else ""
    if not kept.all():
        metadata, split = metadata[kept].reset_index(drop=True), split[kept].reset_index(drop=True)
    for name in ("train", "val", "test"):
        if not (split["subset"] == name).any():
            raise DataError(f"the {name} subset is empty{left_out}: use more images (--limit) or other split fractions")

    train_rows = metadata[(split["subset"] == "train").to_numpy()]
    return PreparedData(data_dir, metadata, split, cache, MetadataEncoder.fit(train_rows))
