"""The `keras.utils.PyDataset` (Keras 3's `Sequence`) that feeds every model.

One class serves all three subsets; what differs is set by the two constructors:
- `training_sequence`: resampled by class and shuffled afresh each epoch, augmented.
- `evaluation_sequence`: every image exactly once, in a fixed order, untouched; for validation,
  test and external sets.

Every random draw comes from a generator seeded by (seed, epoch[, batch]), so a run is the same
however many workers fetch its batches and whether or not it was interrupted and resumed.
"""

import math
import time

import keras
import numpy as np

from dataset.augment import mix_batch, random_dihedral
from dataset.metadata import CLASS_NAMES
from dataset.sampling import Balance

# Seeds, beside (seed, epoch, batch), the generator of a batch's corruptions.
CORRUPTION_STREAM = 1


class LesionSequence(keras.utils.PyDataset):
    """Batches of `(images, one_hot_labels)`, or `((images, metadata), one_hot_labels)`, with a
    third element, each image's weight, once `class_weights` is set.

    Args:
        images: (n, size, size, 3) uint8 array of all decoded images, usually the memory-mapped
            cache; only the rows below are read.
        rows: the rows of `images` in this subset.
        labels: class indices of those rows.
        metadata: optional (len(rows), features) float32 array aligned with `rows`; when given,
            batches carry it as the model's second input.
        batch_size: images per batch; the last batch may be smaller.
        balance: how to resample each epoch (`Balance`); None or mode "none" keeps every row once.
        augment: apply random quarter turns and flips.
        corruption: a `CorruptionAugmentation` that corrupts images at random before the turns
            and flips (a centre crop cuts the frame's own width); None: off.
        mixup: alpha of MixUp's Beta distribution (`dataset.augment.mix_batch`); 0: off.
        cutmix: alpha of CutMix's Beta distribution; 0: off.
        shuffle: reorder the rows every epoch.
        seed: fixes every draw.
        epoch: the epoch to start at (a resumed run passes its number of completed epochs).
        workers: threads that prepare batches ahead of the model (threads rather than
            processes: a process would receive a pickled copy of the memory-mapped cache).
    """

    def __init__(
        self,
        images,
        rows,
        labels,
        *,
        metadata=None,
        batch_size=32,
        balance=None,
        augment=False,
        corruption=None,
        mixup=0.0,
        cutmix=0.0,
        shuffle=False,
        seed=0,
        epoch=0,
        workers=1,
        max_queue_size=10,
    ):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        if batch_size < 1:
            raise ValueError(f"batch size must be positive; got {batch_size}")
        self.images = images
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.rows) != len(self.labels) or (metadata is not None and len(metadata) != len(self.rows)):
            raise ValueError("rows, labels and metadata must have one entry per image of the subset")
        if len(self.rows) == 0:
            raise ValueError("this subset has no images")
        self.metadata = None if metadata is None else np.asarray(metadata, dtype=np.float32)
        self.batch_size = batch_size
        self.balance = balance or Balance("none")
        self.augment = augment
        self.corruption = corruption if corruption is not None and corruption.active else None
        self.mixup = mixup
        self.cutmix = cutmix
        self.shuffle = shuffle
        # Per class; each image's weight is its label times these, which for a mixed label mixes
        # the two images' weights as MixUp and CutMix mix their labels.
        self.class_weights = None
        self.seed = seed
        # Seconds each batch took to make, in the order made by all workers together: how hard the
        # input pipeline works (`training.diagnostics.input_bound`). list.append needs no lock between threads.
        self.fetch_seconds = []
        self.set_epoch(epoch)

    def set_epoch(self, epoch):
        """Draws the given epoch's order (and resampling)."""
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch])
        positions = self.balance.resample(np.arange(len(self.rows)), self.labels, rng)
        self.positions = rng.permutation(positions) if self.shuffle else positions

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def __len__(self):
        return math.ceil(len(self.positions) / self.batch_size)

    def __getitem__(self, index):
        started = time.perf_counter()
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for a sequence of {len(self)} batches")
        positions = self.positions[index * self.batch_size : (index + 1) * self.batch_size]
        images = self.images[self.rows[positions]]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.corruption is not None:
            # A generator of its own: the turns, flips and mixing draw what they drew without it.
            images = self.corruption.apply(
                images, np.random.default_rng([self.seed, self.epoch, index, CORRUPTION_STREAM])
            )
        if self.augment:
            images = random_dihedral(images, rng)
        images = images.astype(np.float32)
        labels = np.eye(len(CLASS_NAMES), dtype=np.float32)[self.labels[positions]]
        metadata = None if self.metadata is None else self.metadata[positions]
        images, labels, metadata = mix_batch(
            images, labels, rng, mixup=self.mixup, cutmix=self.cutmix, metadata=metadata
        )
        inputs = images if metadata is None else (images, metadata)
        batch = (
            (inputs, labels)
            if self.class_weights is None
            else (inputs, labels, labels @ np.asarray(self.class_weights, dtype=np.float32))
        )
        self.fetch_seconds.append(time.perf_counter() - started)
        return batch

    @property
    def epoch_labels(self):
        """Class indices of this epoch's rows, in batch order."""
        return self.labels[self.positions]

    @property
    def epoch_rows(self):
        """Rows of `images` this epoch reads, in batch order."""
        return self.rows[self.positions]


def training_sequence(
    images,
    rows,
    labels,
    *,
    metadata=None,
    batch_size=32,
    balance=None,
    augment=True,
    corruption=None,
    mixup=0.0,
    cutmix=0.0,
    seed=0,
    epoch=0,
    workers=2,
):
    """The training subset: resampled by class and shuffled every epoch, augmented."""
    return LesionSequence(
        images,
        rows,
        labels,
        metadata=metadata,
        batch_size=batch_size,
        balance=balance,
        augment=augment,
        corruption=corruption,
        mixup=mixup,
        cutmix=cutmix,
        shuffle=True,
        seed=seed,
        epoch=epoch,
        workers=workers,
    )


def evaluation_sequence(images, rows, labels, *, metadata=None, batch_size=32, workers=2):
    """Validation, test or external images: each exactly once, in the given order, unaltered."""
    return LesionSequence(images, rows, labels, metadata=metadata, batch_size=batch_size, workers=workers)
