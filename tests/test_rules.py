"""The epoch rules on hand-written score sequences: kept epoch, plateau, early stopping, stages."""

import math

import pytest

from training.rules import EpochRules, Stage, TrainingState, judge_epoch, start_stage


def run_rules(scores, rules, lr=1e-3, state=None):
    """Feeds the scores one epoch at a time; returns the final state, the learning rates the
    epochs trained at, the epochs that improved, and the epoch that stopped the stage (or None)."""
    state = state or start_stage(TrainingState(), Stage(1, len(scores), lr, "all"))
    rates, improved, stopped = [], [], None
    for index in range(len(scores)):
        epoch = state.epochs_completed + 1
        verdict = judge_epoch(state, epoch, scores[: index + 1], lr, rules)
        state = TrainingState(**{**vars(verdict.state), "epochs_completed": epoch})
        rates.append(lr)
        lr = verdict.new_lr if verdict.new_lr is not None else lr
        if verdict.improved:
            improved.append(epoch)
        if verdict.stop:
            stopped = epoch
            break
    return state, rates, improved, stopped


def test_the_best_epoch_is_kept_and_a_tie_does_not_replace_it():
    state, _, improved, _ = run_rules([0.2, 0.5, 0.5, 0.4], EpochRules())
    assert improved == [1, 2]
    assert (state.best_epoch, state.best_value) == (2, 0.5)
    assert state.epochs_without_improvement == 2


def test_plateau_cuts_the_rate_after_patience_and_waits_again():
    rules = EpochRules(lr_patience=2, lr_factor=0.5, early_stopping_patience=100)
    _, rates, _, _ = run_rules([0.5, 0.4, 0.4, 0.4, 0.4, 0.6, 0.4, 0.4], rules, lr=1.0)
    # Epochs 2-3 stall: cut after 3; 4-5 stall: cut after 5; 6 improves; 7-8 stall: cut after 8.
    assert rates == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25]


def test_the_rate_is_never_cut_below_min_lr():
    rules = EpochRules(lr_patience=1, lr_factor=0.1, min_lr=0.05, early_stopping_patience=100)
    _, rates, _, _ = run_rules([0.5, 0.4, 0.4, 0.4], rules, lr=1.0)
    assert rates == [1.0, 1.0, 0.1, 0.05]


def test_no_plateau_cut_under_a_schedule():
    rules = EpochRules(plateau=False, lr_patience=1, early_stopping_patience=100)
    _, rates, _, _ = run_rules([0.5, 0.4, 0.4], rules)
    assert rates == [1e-3] * 3


def test_early_stopping_after_patience_epochs_without_improvement():
    state, _, _, stopped = run_rules(
        [0.3, 0.5, 0.4, 0.5, 0.45, 0.9], EpochRules(early_stopping_patience=3, lr_patience=100)
    )
    assert stopped == 5  # epochs 3, 4 (a tie) and 5 did not beat epoch 2; epoch 6 never runs
    assert state.stage_ended_early and state.best_epoch == 2


def test_a_nan_score_never_improves_and_counts_as_a_stalled_epoch():
    state, _, improved, stopped = run_rules([math.nan, 0.3, math.nan, math.nan], EpochRules(early_stopping_patience=2))
    assert improved == [2]
    assert stopped == 4 and state.best_value == 0.3


def test_the_selection_window_keeps_a_good_stretch_over_a_lucky_spike():
    state, _, improved, _ = run_rules([0.1, 0.9, 0.1, 0.6, 0.6, 0.6], EpochRules(selection_window=3))
    # Means over three epochs: 0.1, 0.5, 0.367, 0.533, 0.433, 0.6.
    assert improved == [1, 2, 4, 6]
    assert state.best_value == pytest.approx(0.6)


def test_a_new_stage_resets_its_counters_but_keeps_the_best_epoch():
    rules = EpochRules(lr_patience=2, early_stopping_patience=2)
    state, _, _, stopped = run_rules([0.6, 0.5, 0.5], rules)
    assert stopped == 3 and state.stage_ended_early

    state = start_stage(state, Stage(2, 5, 1e-4, "top blocks"))
    assert (state.stage, state.stage_first_epoch, state.epochs_without_improvement) == (2, 4, 0)
    assert not state.stage_ended_early and (state.best_epoch, state.best_value) == (1, 0.6)
    assert state.stage_last_epoch(Stage(2, 5, 1e-4, "top blocks")) == 8
    # Stage two must beat stage one's best to keep an epoch of its own.
    state, _, improved, stopped = run_rules([0.55, 0.58, 0.7], rules, state=state)
    assert stopped == 5 and improved == [] and state.best_epoch == 1


def test_only_the_plateau_schedule_cuts_the_rate():
    from training import load_config

    plateau = EpochRules.from_config(load_config("cnn", None, {"lr_patience": 3}))
    cosine = EpochRules.from_config(load_config("cnn", None, {"schedule": "cosine"}))
    assert plateau.plateau and plateau.lr_patience == 3 and not cosine.plateau
