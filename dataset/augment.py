"""Training-time augmentation in the data pipeline: the square's symmetries, MixUp and CutMix.

A dermoscopic image has no up or down, so each of the eight rotations and reflections of a square
image is as plausible as the original. Quarter turns and flips move pixels without interpolating
them: exact, and fast enough that augmentation never makes the model wait for data.

MixUp and CutMix mix each image of a batch with another one, and their labels in proportion. They
are here rather than Keras's `MixUp` and `CutMix` layers because they change the labels (and the
class weights that follow them), which a layer inside the model cannot, and because here they
draw from the sequence's (seed, epoch, batch) generator, so a resumed run draws what the
uninterrupted run drew.
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


def mix_batch(images, labels, rng, *, mixup=0.0, cutmix=0.0, metadata=None):
    """MixUp (Zhang et al., 2018) or CutMix (Yun et al., 2019) of a batch with a shuffled copy of itself.

    Each image is paired with another image of the batch: MixUp blends the two, CutMix pastes a
    box of the partner into it. The labels (and metadata) are mixed in the proportion of each
    image's share of the pixels, lambda ~ Beta(alpha, alpha), one draw per batch. With both on,
    each batch gets one of the two at even odds.

    Args:
        images: (batch, size, size, channels) float32.
        labels: (batch, classes) one-hot labels.
        rng: a numpy Generator; the same state gives the same mixing.
        mixup: alpha of MixUp's Beta distribution; 0: off.
        cutmix: alpha of CutMix's Beta distribution; 0: off.
        metadata: optional (batch, features) float32 array, mixed as the labels are.

    Returns:
        (images, labels, metadata): new float32 arrays (metadata None when none was given).
    """
    methods = [(method, alpha) for method, alpha in (("mixup", mixup), ("cutmix", cutmix)) if alpha > 0]
    if not methods:
        return images, labels, metadata
    method, alpha = methods[rng.integers(len(methods))]
    partners = rng.permutation(len(images))
    share = rng.beta(alpha, alpha)
    if method == "mixup":
        images = share * images + (1 - share) * images[partners]
    else:
        images, share = _paste_box(images, images[partners], share, rng)
    labels = share * labels + (1 - share) * labels[partners]
    if metadata is not None:
        metadata = (share * metadata + (1 - share) * metadata[partners]).astype(np.float32)
    return images.astype(np.float32), labels.astype(np.float32), metadata


def _paste_box(images, partners, share, rng):
    """CutMix's cut: a box of about 1 - `share` of the image's area, centred anywhere and clipped at
    the edges, from `partners` into a copy of `images`; returns it and the share left after clipping."""
    height, width = images.shape[1:3]
    side = np.sqrt(1 - share)
    box_height, box_width = round(height * side), round(width * side)
    centre_y, centre_x = rng.integers(height), rng.integers(width)
    top, bottom = np.clip([centre_y - box_height // 2, centre_y - box_height // 2 + box_height], 0, height)
    left, right = np.clip([centre_x - box_width // 2, centre_x - box_width // 2 + box_width], 0, width)
    mixed = images.copy()
    mixed[:, top:bottom, left:right] = partners[:, top:bottom, left:right]
    return mixed, 1 - (bottom - top) * (right - left) / (height * width)
