"""Training diagnostics: warnings about a run going badly, read from its history after each epoch.

Every check is a pure function of the history so far (a list of dicts, one per epoch, with the
`common.run_folder.HISTORY_COLUMNS`), returning a one-line warning or None. `first_warnings`
replays them over a whole history, so a resumed run finds the warnings of its earlier epochs
again without having stored them. `trainer.EpochRecorder` prints a warning at the epoch it first
fires; `training.json` and the run's `report.md` list them all.

A loss that is NaN or infinite is not a warning: `check_finite` raises, which stops the run.
"""

import math

from common.errors import TrainingError

# Loss not below its best earlier value for this many epochs in a row.
LOSS_PATIENCE = 3
# The train - validation balanced accuracy gap grew in each of this many epochs in a row, and is
# at least OVERFIT_MIN_GAP: a gap that keeps growing, not the noise of a small one.
OVERFIT_EPOCHS = 3
OVERFIT_MIN_GAP = 0.1
# Validation balanced accuracy within CHANCE_MARGIN of a constant predictor's (1 / classes),
# from epoch CHANCE_FROM_EPOCH on (a first epoch at chance is common and no cause for alarm).
CHANCE_MARGIN = 0.01
CHANCE_FROM_EPOCH = 2
# The input pipeline needed at least this share of the training phase (see `input_bound`).
INPUT_BOUND_SHARE = 0.5


def check_finite(history):
    """Raises TrainingError if the last epoch's training or validation loss is NaN or infinite."""
    row = history[-1]
    for name in ("loss", "val_loss"):
        if not math.isfinite(row[name]):
            raise TrainingError(
                f"epoch {row['epoch']}: {name} is {row[name]}; training diverged and was stopped. Likely fixes: "
                "a lower lr (--set lr=...), checking the inputs (images and metadata) for NaN or extreme values, "
                "mixed_precision: false in the config file"
            )


def loss_stalled(history, patience=LOSS_PATIENCE):
    """Training loss has not gone below its best earlier value for `patience` epochs."""
    if len(history) <= patience:
        return None
    losses = [row["loss"] for row in history]
    best_before = min(losses[:-patience])
    if min(losses[-patience:]) < best_before:
        return None
    return (
        f"training loss has not decreased for {patience} epochs (best {best_before:.4f}, now {losses[-1]:.4f}); "
        "the learning rate may be too high or too low"
    )


def overfitting(history, epochs=OVERFIT_EPOCHS, min_gap=OVERFIT_MIN_GAP):
    """The train - validation balanced accuracy gap grew in each of the last `epochs` epochs."""
    if len(history) <= epochs:
        return None
    gaps = [row["balanced_accuracy"] - row["val_balanced_accuracy"] for row in history[-epochs - 1 :]]
    if gaps[-1] < min_gap or not all(later > earlier for earlier, later in zip(gaps, gaps[1:])):
        return None
    return (
        f"overfitting: the train - validation balanced accuracy gap grew for {epochs} epochs "
        f"({gaps[0]:.3f} -> {gaps[-1]:.3f}); consider more augmentation, dropout or weight decay"
    )


def at_chance(history, num_classes, margin=CHANCE_MARGIN, from_epoch=CHANCE_FROM_EPOCH):
    """Validation balanced accuracy is no better than always predicting one class (1 / num_classes).

    Args:
        num_classes: the classes present in the validation subset: a constant predictor's recall
            is 1 for one of them and 0 for the others.
    """
    row = history[-1]
    chance = 1 / num_classes
    if row["epoch"] < from_epoch or row["val_balanced_accuracy"] > chance + margin:
        return None
    return (
        f"validation balanced accuracy {row['val_balanced_accuracy']:.3f} is no better than always predicting "
        f"one class ({chance:.3f}); the model has learnt nothing yet"
    )


def input_bound(history, share=INPUT_BOUND_SHARE):
    """The model waits for data: the input pipeline took at least `share` of the training phase.

    The history's `input_share` is the time the `LesionSequence` spent making the epoch's batches,
    divided by its worker threads, over the training phase's wall time (validation excluded). Timing Keras's fit loop from the outside (the gap between one batch's
    end and the next one's start) would not do: the TensorFlow backend fetches the batch inside
    the compiled train step, JAX outside it. Timing where the batches are made measures the same
    on every backend. With one worker Keras fetches batches in line, so the share is the part of
    the epoch the model waited; with several, it is how close the pipeline, running flat out,
    comes to setting the pace.
    """
    value = history[-1].get("input_share")
    if value is None or not math.isfinite(value) or value < share:
        return None
    return (
        f"the model waits for data: making batches took {value:.0%} of the training time; "
        "raise workers (--set workers=N), or build the image cache at the training size"
    )


def first_warnings(history, num_classes):
    """Each check's first warning over the history, in order: dicts of epoch, check and message."""
    checks = {
        "loss_stalled": loss_stalled,
        "overfitting": overfitting,
        "at_chance": lambda rows: at_chance(rows, num_classes),
        "input_bound": input_bound,
    }
    warnings = []
    for end in range(1, len(history) + 1):
        fired = {warning["check"] for warning in warnings}
        for name, check in checks.items():
            message = None if name in fired else check(history[:end])
            if message:
                warnings.append({"epoch": int(history[end - 1]["epoch"]), "check": name, "message": message})
    return warnings
