"""Training-time augmentation: random rotations by quarter turns and flips.

A dermoscopic image has no up or down, so each of the eight rotations and reflections of a square
image is as plausible as the original. Quarter turns and flips move pixels without interpolating
them: exact, and fast enough that augmentation never makes the model wait for data.
"""

import numpy as np


def random_dihedral(images, rng):
    """Applies a random element of the square's symmetry group to each image of a batch.

    Args:
        images: (batch, size, size, channels) array.
        rng: a numpy Generator; the same state gives the same transforms.

    Returns:
        A new array of the same shape and dtype.
    """
    quarter_turns = rng.integers(4, size=len(images))
    flips = rng.integers(2, size=len(images)).astype(bool)
    augmented = np.empty_like(images)
    for turns in range(4):
        for flip in (False, True):
            chosen = (quarter_turns == turns) & (flips == flip)
            if not chosen.any():
                continue
            transformed = np.rot90(images[chosen], k=turns, axes=(1, 2))
            augmented[chosen] = transformed[:, :, ::-1] if flip else transformed
    return augmented
