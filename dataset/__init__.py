"""The data stage: HAM10000 metadata -> lesion-grouped split -> image cache -> batch sequences.

    from dataset import prepare_data
    data = prepare_data(image_size=128, seed=0)
    train = data.sequence("train", balance=Balance("combined", target=1000), seed=0)

Each step is also usable on its own: `load_metadata`, `make_split`, `load_images`,
`MetadataEncoder`, `LesionSequence`.

The names whose modules need Keras (the image cache's progress bar, the sequences and what
builds them) are imported on first use, so that reading metadata or a split does not start
TensorFlow.
"""

import importlib

from dataset.features import MetadataEncoder
from dataset.images import find_data_dir, locate_images, read_image
from dataset.metadata import CLASS_NAMES, class_indices, load_metadata
from dataset.sampling import BALANCE_MODES, Balance, class_weights
from dataset.split import assign_folds, fold_subsets, load_split, make_split, save_split, split_summary

_NEEDS_KERAS = {
    "ImageCache": "dataset.cache",
    "load_images": "dataset.cache",
    "PreparedData": "dataset.prepare",
    "prepare_data": "dataset.prepare",
    "LesionSequence": "dataset.sequence",
    "evaluation_sequence": "dataset.sequence",
    "training_sequence": "dataset.sequence",
}


def __getattr__(name):
    if name in _NEEDS_KERAS:
        return getattr(importlib.import_module(_NEEDS_KERAS[name]), name)
    raise AttributeError(f"module 'dataset' has no attribute {name!r}")


__all__ = [
    "BALANCE_MODES",
    "assign_folds",
    "Balance",
    "CLASS_NAMES",
    "ImageCache",
    "LesionSequence",
    "MetadataEncoder",
    "PreparedData",
    "class_indices",
    "class_weights",
    "evaluation_sequence",
    "find_data_dir",
    "fold_subsets",
    "load_images",
    "load_metadata",
    "load_split",
    "locate_images",
    "make_split",
    "prepare_data",
    "read_image",
    "save_split",
    "split_summary",
    "training_sequence",
]
