"""The data stage: HAM10000 metadata -> lesion-grouped split -> image cache -> batch sequences.

    from dataset import prepare_data
    data = prepare_data(image_size=128, seed=0)
    train = data.sequence("train", balance=Balance("combined", target=1000), seed=0)

Each step is also usable on its own: `load_metadata`, `make_split`, `load_images`,
`MetadataEncoder`, `LesionSequence`.
"""

from dataset.cache import ImageCache, load_images
from dataset.errors import DataError, UserError
from dataset.features import MetadataEncoder
from dataset.images import find_data_dir, locate_images, read_image
from dataset.metadata import CLASS_NAMES, class_indices, load_metadata
from dataset.prepare import PreparedData, prepare_data
from dataset.sampling import BALANCE_MODES, Balance, class_weights
from dataset.sequence import LesionSequence, evaluation_sequence, training_sequence
from dataset.split import load_split, make_split, save_split, split_summary

__all__ = [
    "BALANCE_MODES",
    "Balance",
    "CLASS_NAMES",
    "DataError",
    "ImageCache",
    "LesionSequence",
    "MetadataEncoder",
    "PreparedData",
    "class_indices",
    "class_weights",
    "evaluation_sequence",
    "find_data_dir",
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
    "UserError",
]
