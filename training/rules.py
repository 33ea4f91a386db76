"""The training rules, as pure functions of the state: stages, the kept epoch, the plateau rule
and early stopping.

A run has one stage, or two for a pretrained backbone:
    1. head only, backbone frozen (its batch norm in inference mode), at `lr`, for `head_epochs` epochs;
    2. the backbone's blocks from `fine_tune_from_block` up join the head, for up to `epochs`
       epochs: the head at `lr`, the backbone at `lr * fine_tune_lr_factor`.
After each epoch `judge_epoch` says, from the state and the validation scores so far, whether the
epoch is the new kept one (the best mean score over the last `selection_window` epochs, over the
whole run), whether the learning rate is cut (`lr_patience` epochs without improvement in the
stage) and whether the stage stops (`early_stopping_patience` epochs without). Nothing here
touches a model or a file: `trainer.EpochRecorder` applies the verdict and persists the state.
"""

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

# The validation score the rules follow.
MONITOR = "val_balanced_accuracy"


@dataclass(frozen=True)
class Stage:
    number: int
    epochs: int  # at most; early stopping may end the stage sooner
    lr: float
    backbone: str  # which layers train: "all", "frozen" (head only) or "top blocks"
    backbone_lr_factor: float = 1.0  # "top blocks": the backbone trains at lr times this


def plan_stages(config):
    """The run's stages; epochs are numbered continuously across them."""
    if not config.pretrained:
        return [Stage(1, config.epochs, config.lr, "all")]
    fine_tune = Stage(
        2 if config.head_epochs else 1, config.epochs, config.lr, "top blocks", config.fine_tune_lr_factor
    )
    if config.head_epochs == 0:
        return [fine_tune]
    return [Stage(1, config.head_epochs, config.lr, "frozen"), fine_tune]


@dataclass(frozen=True)
class TrainingState:
    """Everything a resumed run needs besides the model and the history."""

    epochs_completed: int = 0
    stage: int = 0  # the stage under way (0: none started)
    stage_first_epoch: int = 1
    best_value: float = -math.inf
    best_epoch: int = 0
    epochs_without_improvement: int = 0  # in this stage; for early stopping
    epochs_since_lr_change: int = 0  # in this stage; for the plateau rule
    stage_ended_early: bool = False
    elapsed_seconds: float = 0.0

    def stage_finished(self, stage):
        return self.stage_ended_early or self.epochs_completed >= self.stage_last_epoch(stage)

    def stage_last_epoch(self, stage):
        return self.stage_first_epoch - 1 + stage.epochs


@dataclass(frozen=True)
class EpochRules:
    """The settings of the rules (`TrainConfig`'s fields of the same names)."""

    selection_window: int = 1
    plateau: bool = True  # cut the learning rate when the score stalls (schedule "plateau")
    lr_patience: int = 4
    lr_factor: float = 0.5
    min_lr: float = 1e-6
    early_stopping_patience: int = 10

    @classmethod
    def from_config(cls, config):
        return cls(
            selection_window=config.selection_window,
            plateau=config.schedule == "plateau",
            lr_patience=config.lr_patience,
            lr_factor=config.lr_factor,
            min_lr=config.min_lr,
            early_stopping_patience=config.early_stopping_patience,
        )


@dataclass(frozen=True)
class Verdict:
    """What an epoch decided.

    Attributes:
        state: the state after the epoch (its counters and best; `epochs_completed` is the caller's).
        improved: the epoch is the new kept one.
        new_lr: the learning rate to continue with, or None to keep the current one.
        stop: end the stage now.
    """

    state: TrainingState
    improved: bool
    new_lr: float | None = None
    stop: bool = False


def start_stage(state, stage):
    """The state at the start of `stage`: its counters reset; the best epoch carries over."""
    return dataclasses.replace(
        state,
        stage=stage.number,
        stage_first_epoch=state.epochs_completed + 1,
        epochs_without_improvement=0,
        epochs_since_lr_change=0,
        stage_ended_early=False,
    )


def judge_epoch(state, epoch, scores, lr, rules):
    """Applies the rules to a finished epoch.

    Args:
        state: the state before the epoch.
        epoch: the epoch's number, from 1.
        scores: the monitored score of every epoch of the run so far, this one last.
        lr: the learning rate the epoch trained at.
        rules: `EpochRules`.

    A NaN score (a diverged epoch) never improves: its window's mean is NaN, and NaN > best is
    false. A tie with the best is no improvement: the earlier epoch stays the kept one.
    """
    # A kept epoch must be good with its predecessors too, not a lucky spike of a noisy score.
    score = float(np.mean(scores[-rules.selection_window :]))
    if score > state.best_value:
        improved = dataclasses.replace(
            state, best_value=score, best_epoch=epoch, epochs_without_improvement=0, epochs_since_lr_change=0
        )
        return Verdict(improved, improved=True)
    without, since, new_lr = state.epochs_without_improvement + 1, state.epochs_since_lr_change + 1, None
    if rules.plateau and since >= rules.lr_patience and lr > rules.min_lr:
        new_lr, since = max(lr * rules.lr_factor, rules.min_lr), 0
    stop = without >= rules.early_stopping_patience
    stalled = dataclasses.replace(
        state,
        epochs_without_improvement=without,
        epochs_since_lr_change=since,
        stage_ended_early=state.stage_ended_early or stop,
    )
    return Verdict(stalled, improved=False, new_lr=new_lr, stop=stop)
