"""Balancing, class weights and the batch sequences of the three subsets."""

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from dataset import Balance, class_weights, evaluation_sequence, prepare_data, training_sequence

# Training-subset class counts of HAM10000's default split, in CLASS_NAMES order.
TRAIN_COUNTS = [228, 359, 770, 80, 778, 4693, 100]
LABELS = np.repeat(np.arange(7), TRAIN_COUNTS)


@pytest.fixture(scope="module")
def toy_data(toy_dir):
    return prepare_data(toy_dir, image_size=32, verbose=False)


def epoch_counts(sequence):
    labels = np.concatenate([batch[1].argmax(axis=1) for batch in (sequence[i] for i in range(len(sequence)))])
    return np.bincount(labels, minlength=7).tolist()


@pytest.mark.parametrize(
    "balance, expected",
    [
        (Balance("none"), TRAIN_COUNTS),
        (Balance("down"), [80] * 7),
        (Balance("up"), [4693] * 7),
        # nv down to the target; the rest up towards it, at most 4 times their own count.
        (Balance("combined", target=1000, max_oversampling=4.0), [912, 1000, 1000, 320, 1000, 1000, 400]),
    ],
)
def test_one_training_epoch_has_the_requested_class_counts(balance, expected):
    images = np.zeros((len(LABELS), 4, 4, 3), dtype=np.uint8)
    sequence = training_sequence(images, np.arange(len(LABELS)), LABELS, batch_size=256, balance=balance, augment=False)
    assert epoch_counts(sequence) == expected


def test_resampling_is_seeded_and_redrawn_every_epoch():
    images = np.zeros((len(LABELS), 4, 4, 3), dtype=np.uint8)

    def draw(seed, epoch):
        return training_sequence(
            images, np.arange(len(LABELS)), LABELS, balance=Balance("combined"), seed=seed, epoch=epoch
        ).epoch_rows

    np.testing.assert_array_equal(draw(0, 0), draw(0, 0))
    assert not np.array_equal(draw(0, 0), draw(0, 1))
    assert not np.array_equal(draw(0, 0), draw(1, 0))
    # Over epochs, fresh draws of the down-sampled nevi cover far more than one epoch's 1,000.
    nevi = np.flatnonzero(LABELS == 5)
    seen = set().union(*(set(draw(0, epoch)) & set(nevi) for epoch in range(5)))
    assert len(seen) > 3000


def test_class_weights_equal_scikit_learns():
    weights = class_weights(LABELS)
    expected = compute_class_weight("balanced", classes=np.arange(7), y=LABELS)
    np.testing.assert_allclose([weights[i] for i in range(7)], expected)


def test_class_weight_boost_multiplies_one_class():
    plain, boosted = class_weights(LABELS), class_weights(LABELS, {"mel": 2.0})
    assert boosted[4] == pytest.approx(2 * plain[4])
    assert all(boosted[i] == plain[i] for i in range(7) if i != 4)


def test_test_sequence_yields_every_image_once_in_a_fixed_order(toy_data):
    test = toy_data.sequence("test", batch_size=5)
    rows, cache_rows, labels = toy_data.subset("test")

    def one_pass():
        return np.concatenate([test[i][0] for i in range(len(test))])

    first, second = one_pass(), one_pass()
    np.testing.assert_array_equal(first, second)
    # Untouched: exactly the cached pixels, each test image once, in subset order.
    np.testing.assert_array_equal(first, toy_data.cache.images[cache_rows].astype(np.float32))
    assert len(first) == len(rows) == len(set(rows["image_id"]))


def test_validation_and_test_are_never_resampled_or_augmented(toy_data):
    for name in ("val", "test"):
        sequence = toy_data.sequence(name, balance=Balance("up"), augment=True, batch_size=100)
        _, cache_rows, labels = toy_data.subset(name)
        images, one_hot = sequence[0]
        np.testing.assert_array_equal(images, toy_data.cache.images[cache_rows].astype(np.float32))
        np.testing.assert_array_equal(one_hot.argmax(axis=1), labels)


def test_augmentation_applies_quarter_turns_and_flips_only_to_training(toy_data):
    train = toy_data.sequence("train", batch_size=64, augment=True, seed=3)
    images, _ = train[0]
    originals = toy_data.cache.images[train.epoch_rows[:64]].astype(np.float32)
    changed = [not np.array_equal(a, b) for a, b in zip(images, originals)]
    assert any(changed)
    # Each image is one of the eight rotations and reflections of its original.
    for image, original in zip(images, originals):
        variants = [np.rot90(original, k) for k in range(4)] + [np.rot90(original, k)[:, ::-1] for k in range(4)]
        assert any(np.array_equal(image, variant) for variant in variants)


def test_metadata_batches_carry_the_encoded_features(toy_data):
    train = toy_data.sequence("train", with_metadata=True, batch_size=4)
    (images, features), labels = train[0]
    assert images.shape == (4, 32, 32, 3) and labels.shape == (4, 7)
    assert features.shape == (4, toy_data.encoder.size) and features.dtype == np.float32


def test_evaluation_sequence_keeps_a_partial_last_batch():
    images = np.zeros((10, 4, 4, 3), dtype=np.uint8)
    sequence = evaluation_sequence(images, np.arange(10), np.zeros(10, dtype=int), batch_size=4)
    assert len(sequence) == 3 and len(sequence[2][0]) == 2
    with pytest.raises(IndexError):
        sequence[3]


@pytest.mark.parametrize("method", ["mixup", "cutmix"])
def test_mixing_mixes_each_image_and_its_label_in_the_same_proportion(method):
    # Image i is flat at 10 * its class: a mixed image's mean is its label's mix of those values,
    # exactly, for a blend (MixUp) and for a pasted box (CutMix) alike.
    labels = np.arange(7).repeat(3)
    images = np.broadcast_to((10.0 * labels)[:, None, None, None], (len(labels), 8, 8, 3)).astype(np.uint8)
    sequence = training_sequence(
        images, np.arange(len(labels)), labels, batch_size=len(labels), augment=False, seed=3, **{method: 1.0}
    )
    for epoch in range(3):
        sequence.set_epoch(epoch)
        mixed_images, mixed_labels = sequence[0]
        np.testing.assert_allclose(mixed_labels.sum(axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(mixed_images.mean(axis=(1, 2, 3)), mixed_labels @ (10.0 * np.arange(7)), atol=1e-3)
        assert (mixed_labels.max(axis=1) < 1).any()  # some images were mixed, not just reordered
    again = training_sequence(
        images, np.arange(len(labels)), labels, batch_size=len(labels), augment=False, seed=3, **{method: 1.0}
    )
    again.set_epoch(2)
    np.testing.assert_array_equal(again[0][0], mixed_images)  # drawn from (seed, epoch, batch) alone


def test_mixing_mixes_the_metadata_as_the_labels():
    labels = np.arange(7).repeat(2)
    metadata = np.stack([labels, -labels], axis=1).astype(np.float32)
    images = np.zeros((len(labels), 8, 8, 3), dtype=np.uint8)
    sequence = training_sequence(
        images, np.arange(len(labels)), labels, metadata=metadata, batch_size=len(labels), augment=False, mixup=1.0
    )
    (_, mixed_metadata), mixed_labels = sequence[0]
    np.testing.assert_allclose(
        mixed_metadata, mixed_labels @ np.stack([np.arange(7), -np.arange(7)], axis=1), atol=1e-5
    )


def test_class_weights_weigh_each_image_by_its_label_mixed_ones_too():
    labels = np.arange(7).repeat(4)
    images = np.zeros((len(labels), 8, 8, 3), dtype=np.uint8)
    weights = np.arange(1.0, 8.0)
    plain = training_sequence(images, np.arange(len(labels)), labels, batch_size=7, augment=False)
    plain.class_weights = weights
    _, one_hot, sample_weights = plain[0]
    np.testing.assert_array_equal(sample_weights, weights[one_hot.argmax(axis=1)])  # what fit's class_weight gives
    mixed = training_sequence(images, np.arange(len(labels)), labels, batch_size=7, augment=False, mixup=0.4)
    mixed.class_weights = weights
    _, soft, sample_weights = mixed[0]
    np.testing.assert_allclose(sample_weights, soft @ weights, rtol=1e-6)
    assert not np.allclose(sample_weights, weights[soft.argmax(axis=1)])
