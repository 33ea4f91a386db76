"""Training-time augmentation: random rotations by quarter turns and flips.

A dermoscopic image has no up or down, so each of the eight rotations and reflections of a square
image is as plausible as the original. Quarter turns and flips move pixels without interpolating
them: exact, and fast enough that augmentation never makes the model wait for data.
"""

import numpy as np


def _dihedral(quarter_turns, flip):
    def transform(images):
        rotated = np.rot90(images, k=quarter_turns, axes=(1, 2))
        return rotated[:, :, ::-1] if flip else rotated

    return transform


# The eight rotations and reflections of a batch of square images, (batch, size, size, channels);
# the identity first. Test-time augmentation averages a model's predictions over them.
DIHEDRAL_TRANSFORMS = tuple(_dihedral(turns, flip) for flip in (False, True) for turns in range(4))


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
            augmented[chosen] = DIHEDRAL_TRANSFORMS[4 * flip + turns](images[chosen])
    return augmented
