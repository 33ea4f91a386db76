"""Fitting one model: its stages, the kept epoch, the history, and checkpoints to resume from.

The stages, the kept epoch, the plateau rule and early stopping are `training.rules`; this module
applies them to the model and records the run.

After every epoch, the run folder gets the history so far, the kept model when it improved, and
`checkpoint/`: the epoch's model with its optimizer state, and `state.json`, written last, which
is what a resumed run trusts. A run killed at any moment resumes from its last completed epoch.
"""

import dataclasses
import importlib.util
import random
import shutil
import sys
import time
import warnings
import zipfile
from pathlib import Path

import keras
import numpy as np

from common.errors import ConfigError, DataError
from common.files import atomic_path, read_json, write_json
from common.run_folder import (
    CHECKPOINT_DIR,
    METRIC_COLUMNS,
    MODEL_FILENAME,
    STATE_FILENAME,
    TENSORBOARD_DIR,
    TRAINING_FILENAME,
    read_history,
    write_history,
)
from dataset import CLASS_NAMES, class_weights
from networks import (
    backbone_variables,
    build_augmentation,
    create_model,
    freeze_backbone,
    get_model_entry,
    let_augmentation_compile,
    unfreeze_top_blocks,
)
from training.devices import compute_device
from training.diagnostics import check_finite, first_warnings
from training.losses import make_loss, weighs_samples
from training.metrics import BalancedAccuracy
from training.optimizers import ScaledRatesAdam, ScaledRatesAdamW, scaled_indices
from training.rules import MONITOR, EpochRules, TrainingState, judge_epoch, plan_stages, start_stage
from training.tracking import tracking_callbacks


def load_state(run_dir):
    """The `TrainingState` of an interrupted run's last completed epoch; DataError if there is none."""
    path = Path(run_dir) / CHECKPOINT_DIR / STATE_FILENAME
    values = read_json(
        path,
        f"{run_dir}: no checkpoint to resume from ({CHECKPOINT_DIR}/{STATE_FILENAME} is missing)",
        "; the run cannot be resumed, start it again",
    )
    known = [item.name for item in dataclasses.fields(TrainingState)]
    if not isinstance(values, dict) or set(values) - set(known):
        unknown = sorted(set(values) - set(known)) if isinstance(values, dict) else values
        raise DataError(f"{path}: not a training state (unexpected {unknown}; expected keys {', '.join(known)})")
    return TrainingState(**values)


def save_state(run_dir, state):
    write_json(Path(run_dir) / CHECKPOINT_DIR / STATE_FILENAME, dataclasses.asdict(state))


def build_model(config, metadata_features):
    """The configured network; `metadata_features` is 0 unless the hybrid head is on.

    Raises:
        ConfigError: `fine_tune_from_block` is above the pretrained backbone's last block.
    """
    keras.config.set_dtype_policy("mixed_float16" if _use_mixed_precision(config) else "float32")
    # Fixes the initial weights (and dropout) for a given seed.
    keras.utils.set_random_seed(config.seed)
    model = create_model(
        config.model,
        config.image_size,
        num_classes=len(CLASS_NAMES),
        metadata_features=metadata_features,
        head=config.head_options,
        options=config.model_options,
        weights=config.weights if config.pretrained else None,
        augmentation=build_augmentation(config.augmentation_options, seed=config.seed),
        colour_constancy=config.colour_constancy,
    )
    if config.pretrained:
        # Checked now, not when fine-tuning begins after the head's epochs.
        last = max(get_model_entry(config.model).blocks.numbers(model.get_layer("backbone")).values())
        if config.fine_tune_from_block > last:
            raise ConfigError(
                f"fine_tune_from_block {config.fine_tune_from_block} is above {config.model}'s last block, {last} (its blocks are 1 to {last})"
            )
    return model


def check_weights(configs):
    """Loads the pretrained weights the configs ask for: a missing or wrong file, or an offline
    download, fails now rather than after the runs before it have trained.

    Raises:
        UserError: weights that cannot be had (the message says how to go on).
    """
    checked = set()
    for config in configs:
        key = (config.model, config.weights, config.image_size)
        if config.pretrained and key not in checked:
            build_model(config, metadata_features=0)
            checked.add(key)


def compile_model(model, config, learning_rate, weights, *, stage_steps=None, warmup_steps=0, backbone_lr_factor=1.0):
    """Compiles for one stage; `stage_steps` (the stage's optimizer steps) sizes a cosine schedule;
    the backbone's trainable variables learn at `backbone_lr_factor` times the rate."""
    loss = make_loss(
        config.loss,
        weights,
        focal_gamma=config.focal_gamma,
        melanoma_cost=config.melanoma_cost,
        label_smoothing=config.label_smoothing,
    )
    let_augmentation_compile(model)  # before "auto" jit_compile is resolved
    scaled = scaled_indices(model, backbone_variables(model)) if backbone_lr_factor != 1 else ()
    model.compile(
        optimizer=make_optimizer(config, learning_rate, stage_steps, warmup_steps, scaled, backbone_lr_factor),
        loss=loss,
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"), BalancedAccuracy(len(CLASS_NAMES))],
        jit_compile=config.jit_compile,
    )


def make_optimizer(config, learning_rate, stage_steps=None, warmup_steps=0, scaled_variables=(), lr_factor=1.0):
    """Adam or AdamW, at a constant rate (cut by the plateau rule) or on a cosine schedule, with
    an exponential moving average of the weights if `config.ema`; the variables at the indices
    `scaled_variables` learn at `lr_factor` times the rate (`training.optimizers`)."""
    if config.schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup_steps else learning_rate,
            decay_steps=max(stage_steps - warmup_steps, 1),
            warmup_target=learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    options = {"use_ema": config.ema > 0, "ema_momentum": config.ema or 0.99}
    if scaled_variables:
        options.update(scaled_variables=scaled_variables, lr_factor=lr_factor)
    if config.optimizer == "adamw":
        adamw = ScaledRatesAdamW if scaled_variables else keras.optimizers.AdamW
        return adamw(learning_rate, weight_decay=config.weight_decay, **options)
    return (ScaledRatesAdam if scaled_variables else keras.optimizers.Adam)(learning_rate, **options)


def fit(config, data, run_dir, *, resume=False, model=None, verbose="auto"):
    """Trains the configured model on prepared data, recording everything in `run_dir`.

    Args:
        config: a validated `TrainConfig`.
        data: `dataset.PreparedData` for the run's split.
        run_dir: the run folder (from `create_run_dir`, or an interrupted run's with `resume`).
        resume: continue from the folder's last completed epoch.
        model: the model `build_model(config, ...)` made, to train from its start; None builds it.
        verbose: Keras's progress output ("auto": a bar on a terminal, a line per epoch in logs).

    Returns:
        The summary written to `training.json` (best epoch, epochs run, wall time, ...).
    """
    run_dir = Path(run_dir)
    if verbose == "auto":
        # Keras's "auto" is always the bar, which floods a log file with carriage returns.
        verbose = 1 if sys.stdout.isatty() else 2
    state = load_state(run_dir) if resume else TrainingState()
    train, val, weights = _sequences(config, data)
    stages = plan_stages(config)

    model = (
        _resumed_model(run_dir, state)
        if resume
        else model or build_model(config, data.encoder.size if config.metadata else 0)
    )
    print(
        f"Training {model.name} ({model.count_params():,} parameters) on {len(train.rows)} images, "
        f"{len(train.positions)} per epoch after '{config.balance}' balancing: "
        f"{len(train)} steps per epoch, up to {sum(stage.epochs for stage in stages)} epochs"
    )
    checkpoint_loaded = resume
    recorder = EpochRecorder(run_dir, state, _read_history(run_dir, state.epochs_completed), config, train, val)
    # The recorder first: the others read the epoch's row it appends.
    callbacks = [
        recorder,
        *tensorboard_callbacks(config, run_dir),
        *tracking_callbacks(config, run_dir, recorder.history),
    ]
    for stage in stages:
        state = recorder.state
        if stage.number < state.stage or (stage.number == state.stage and state.stage_finished(stage)):
            continue
        if stage.number > state.stage:
            # A resumed run's model is already set up for the stage under way.
            _start_stage(model, stage, state, config, weights, run_dir, steps_per_epoch=len(train))
            recorder.state = state = start_stage(state, stage)
        recorder.stage = stage
        train.set_epoch(state.epochs_completed)
        # With EMA, validation, the kept model and the checkpoint hold the averaged weights; the
        # checkpoint a run resumes from was saved with them in the model.
        averaging = [SwapEMAWeights(averaged_in_model=checkpoint_loaded)] if config.ema else []
        checkpoint_loaded = False
        model.fit(
            train,
            validation_data=val,
            initial_epoch=state.epochs_completed,
            epochs=state.stage_last_epoch(stage),
            callbacks=[*averaging, *callbacks],
            verbose=verbose,
        )
    summary = _summary(recorder, model, stages, config, train, weights)
    _keep_for_inference(run_dir / MODEL_FILENAME)
    write_json(run_dir / TRAINING_FILENAME, summary)
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    return summary


def _resumed_model(run_dir, state):
    """The model of an interrupted run's last completed epoch, with its optimizer state."""
    model = _load_checkpoint(_checkpoint_path(run_dir, state.epochs_completed))
    # The kept model may not have been copied out before the interruption.
    _copy_atomically(_checkpoint_path(run_dir, state.best_epoch), run_dir / MODEL_FILENAME)
    print(f"Resuming {run_dir.name} after epoch {state.epochs_completed}")
    return model


def _sequences(config, data):
    """The training and validation sequences, and the class weights of the training loss."""
    train = data.sequence(
        "train",
        batch_size=config.batch_size,
        with_metadata=config.metadata,
        balance=config.balance_options,
        augment=config.augment,
        corruption=config.corruption_options,
        mixup=config.mixup,
        cutmix=config.cutmix,
        seed=config.seed,
        workers=config.workers,
    )
    val = data.sequence("val", batch_size=config.batch_size, with_metadata=config.metadata, workers=config.workers)
    # From the first epoch's resampling, in a resumed run too.
    weights = (
        class_weights(train.epoch_labels, config.class_weight_boost)
        if config.class_weights
        else {index: 1.0 for index in range(len(CLASS_NAMES))}
    )
    if weighs_samples(config.loss):
        # The sequence weighs each image by its label (`class_weight` of `fit` would weigh a mixed
        # label by its larger part only); for one-hot labels the two are the same.
        train.class_weights = [weights[index] for index in range(len(CLASS_NAMES))]
    return train, val, weights


def _summary(recorder, model, stages, config, train, weights):
    """What `training.json` records of the finished training."""
    state = recorder.state
    return {
        "best_epoch": state.best_epoch,
        "best_val_balanced_accuracy": state.best_value,
        "epochs_completed": state.epochs_completed,
        "stopped_early": state.epochs_completed < sum(stage.epochs for stage in stages),
        "wall_time_s": round(state.elapsed_seconds, 1),
        "seconds_per_epoch": round(state.elapsed_seconds / max(state.epochs_completed, 1), 1),
        "parameters": int(model.count_params()),
        # What "auto" resolved to on this machine and backend.
        "precision": model.dtype_policy.name,
        "jit_compile": bool(model.jit_compile),
        "trainable_parameters": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "train_images": int(len(train.rows)),
        "train_images_per_epoch": int(len(train.positions)),
        "class_weights": {CLASS_NAMES[i]: round(w, 4) for i, w in weights.items()}
        if weighs_samples(config.loss)
        else None,
        "stage_boundaries": _stage_boundaries(recorder.history),
        "stages": stage_records(stages, recorder.history, config),
        "diagnostics": recorder.warnings(),
    }


def tensorboard_callbacks(config, run_dir):
    """Keras's TensorBoard callback writing into the run folder, if `config.tensorboard`.

    It writes with `tf.summary` under every backend: without TensorFlow (a JAX-only install) the
    run goes on without TensorBoard logs, and says so.
    """
    if not config.tensorboard:
        return []
    if importlib.util.find_spec("tensorflow") is None:
        print(
            "Note: no TensorBoard logs: Keras writes them with TensorFlow, which is not installed (tensorboard: false silences this)"
        )
        return []
    return [keras.callbacks.TensorBoard(log_dir=str(Path(run_dir) / TENSORBOARD_DIR), write_graph=False)]


def _load_checkpoint(path):
    """A checkpoint's model, compiled with its optimizer state; DataError if the file is damaged."""
    if not path.is_file():
        raise DataError(f"{path}: checkpoint file not found; the run cannot be resumed, start it again")
    try:
        with warnings.catch_warnings():
            # Under JAX the saved compile settings ask for jit before the augmentation layers are
            # marked fit for it; `compile_model` marks them and compiles the model again.
            warnings.filterwarnings("ignore", message="Model doesn't support `jit_compile=True`")
            return keras.saving.load_model(path)
    except (OSError, ValueError, zipfile.BadZipFile):
        if not zipfile.is_zipfile(path):
            raise DataError(
                f"{path}: damaged checkpoint (not a .keras archive); the run cannot be resumed, start it again"
            ) from None
        raise


def _keep_for_inference(path):
    """Rewrites the kept model without its optimizer and training metrics.

    What is left (architecture and weights) loads with plain `keras.saving.load_model`, without
    this project's training code: the metrics and losses only training registers are not in it.
    """
    model = keras.saving.load_model(path, compile=False)
    with atomic_path(path) as temporary:
        model.save(temporary)


def _start_stage(model, stage, state, config, weights, run_dir, steps_per_epoch):
    """Sets up a stage: which layers train, at which rate, from which weights."""
    if state.stage > 0:
        # Fine-tuning starts from the best head, not from wherever stage one stopped.
        model.load_weights(run_dir / MODEL_FILENAME)
    if stage.backbone == "frozen":
        freeze_backbone(model)
    elif stage.backbone == "top blocks":
        unfreeze_top_blocks(
            model, config.fine_tune_from_block, get_model_entry(config.model).blocks, config.fine_tune_batch_norm
        )
    warmup_epochs = config.warmup_epochs if stage.number == 1 else 0
    compile_model(
        model,
        config,
        stage.lr,
        weights,
        stage_steps=stage.epochs * steps_per_epoch,
        warmup_steps=warmup_epochs * steps_per_epoch,
        backbone_lr_factor=stage.backbone_lr_factor,
    )
    print(f"Stage {stage.number}: training {describe_stage(stage, config)} for up to {stage.epochs} epochs")


def describe_stage(stage, config):
    """What a stage trains, at which rates, in words (the log and `training.json`)."""
    if stage.backbone == "frozen":
        return f"the head only at lr {stage.lr:g} (backbone frozen, its batch norm in inference mode)"
    if stage.backbone == "top blocks":
        norm = "trained" if config.fine_tune_batch_norm else "frozen"
        return (
            f"the head at lr {stage.lr:g} and backbone blocks {config.fine_tune_from_block} and above at lr "
            f"{stage.lr * stage.backbone_lr_factor:g} (their batch norm {norm})"
        )
    return f"all layers at lr {stage.lr:g}"


def stage_records(stages, history, config):
    """Each stage as `training.json` records it: what trained, its rates, the epochs it ran."""
    records = []
    for stage in stages:
        epochs = [int(row["epoch"]) for row in history if row["stage"] == stage.number]
        records.append(
            {
                "stage": stage.number,
                "trains": describe_stage(stage, config),
                "lr": stage.lr,
                "backbone_lr": 0.0 if stage.backbone == "frozen" else stage.lr * stage.backbone_lr_factor,
                "epochs": [epochs[0], epochs[-1]] if epochs else None,
            }
        )
    return records


def _stage_boundaries(history):
    """Epochs after which a new stage began."""
    return [int(before["epoch"]) for before, after in zip(history, history[1:]) if after["stage"] != before["stage"]]


class SwapEMAWeights(keras.callbacks.SwapEMAWeights):
    """Keras's swap of the weights and their moving average at each epoch's end, so that
    validation and the callbacks after it see the average, and back before the next epoch.

    Args:
        averaged_in_model: the model was loaded from a checkpoint, which holds the average in
            the model's weights (and the raw weights in the optimizer): swap back first.
    """

    def __init__(self, averaged_in_model=False):
        super().__init__(swap_on_epoch=True)
        # Private: Keras's callback tracks which weights the model holds in this attribute and has no
        # public way to start from "the average is in the model", as a loaded checkpoint is.
        self._ema_weights_in_model = averaged_in_model


class EpochRecorder(keras.callbacks.Callback):
    """After each epoch: the history, the diagnostics' new warnings printed, the rules' verdict
    applied, the kept model, the checkpoint. A NaN or infinite loss stops the run (TrainingError).

    Args:
        train, val: the run's `LesionSequence`s: how long the training batches took to make (for
            the `input_share` column), and the classes validation can score.
    """

    def __init__(self, run_dir, state, history, config, train, val):
        super().__init__()
        self.run_dir = run_dir
        self.state = state
        self.history = history
        self.config = config
        self.rules = EpochRules.from_config(config)
        self.stage = None
        self.train = train
        self.val_classes = len(np.unique(val.labels))
        self._started = None
        self._train_seconds = None
        self._batches_before = 0
        self._first_step_seconds = None
        self._first_val_step_seconds = None
        self._val_steps = 0
        self._estimated = False

    def warnings(self):
        """Every diagnostic warning of the run so far, with the epoch it first fired at."""
        return first_warnings(self.history, self.val_classes)

    def on_epoch_begin(self, epoch, logs=None):
        reseed(self.model, self.config.seed, epoch)
        self._started = time.perf_counter()
        self._train_seconds = None
        self._batches_before = len(self.train.fetch_seconds)

    def on_test_begin(self, logs=None):
        # Validation starts: the training phase, which the input share is measured over, is over.
        if self._started is not None and self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._started

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0 and self._first_step_seconds is None:
            self._first_step_seconds = time.perf_counter() - self._started

    def on_test_batch_end(self, batch, logs=None):
        if self._estimated or self._train_seconds is None:
            return
        self._val_steps = batch + 1
        if batch == 0:
            self._first_val_step_seconds = time.perf_counter() - self._started - self._train_seconds

    def _input_share(self, seconds):
        """The share of the epoch's training phase that making its batches took, per worker thread
        (see `training.diagnostics.input_bound`)."""
        fetch_seconds = sum(self.train.fetch_seconds[self._batches_before :]) / max(self.train.workers, 1)
        return min(fetch_seconds / (self._train_seconds or seconds), 1.0)

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._started
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row = {
            "epoch": epoch + 1,
            "stage": self.stage.number,
            "lr": lr,
            "seconds": round(seconds, 2),
            "input_share": round(self._input_share(seconds), 3),
        }
        row.update({name: float(logs[name]) for name in METRIC_COLUMNS})
        self.history.append(row)
        # Before anything is saved: the last checkpoint stays the last epoch with a finite loss.
        check_finite(self.history)
        for warning in self.warnings():
            if warning["epoch"] == epoch + 1:
                print(f"\nWarning, epoch {epoch + 1}: {warning['message']}")

        verdict = judge_epoch(self.state, epoch + 1, [r[MONITOR] for r in self.history], lr, self.rules)
        state = self.state = dataclasses.replace(
            verdict.state, epochs_completed=epoch + 1, elapsed_seconds=self.state.elapsed_seconds + seconds
        )
        improved = verdict.improved
        if verdict.new_lr is not None:
            self.model.optimizer.learning_rate = verdict.new_lr
            print(
                f"\nEpoch {epoch + 1}: {MONITOR} has not improved for {self.rules.lr_patience} epochs; lr {lr:g} -> {verdict.new_lr:g}"
            )
        if verdict.stop:
            self.model.stop_training = True
            print(
                f"\nEpoch {epoch + 1}: stopping stage {self.stage.number} early; best {MONITOR} {state.best_value:.4f} at epoch {state.best_epoch}"
            )

        # Commit order: the epoch's model, the history, then the state that points at them.
        # Files are deleted only once nothing points at them any more.
        checkpoint = _checkpoint_path(self.run_dir, epoch + 1)
        with atomic_path(checkpoint) as temporary:
            self.model.save(temporary)
        write_history(self.run_dir, self.history)
        save_state(self.run_dir, state)
        if improved:
            _copy_atomically(checkpoint, self.run_dir / MODEL_FILENAME)
        for old in (self.run_dir / CHECKPOINT_DIR).glob("epoch-*.keras"):
            if old.name not in (checkpoint.name, _checkpoint_path(self.run_dir, state.best_epoch).name):
                old.unlink()

        if not self._estimated:
            self._estimated = True
            remaining = self.params["epochs"] - (epoch + 1)
            # The first training step and the first validation step also trace and compile the
            # model: count each as an average step of its phase.
            train_seconds = self._train_seconds or seconds
            typical = steady_seconds(train_seconds, self._first_step_seconds, self.params.get("steps") or 1)
            typical += steady_seconds(seconds - train_seconds, self._first_val_step_seconds, self._val_steps)
            seconds_left = remaining * typical
            estimate = f"{seconds_left:.0f} s" if seconds_left < 90 else f"{seconds_left / 60:.0f} min"
            print(
                f"\nEpoch {epoch + 1} took {seconds:.0f} s; this stage has at most {remaining} more "
                f"(about {estimate}; early stopping may end it sooner)"
            )


def steady_seconds(seconds, first_step_seconds, steps):
    """A phase's time with its first step counted as the mean of the others."""
    if steps < 2 or first_step_seconds is None:
        return seconds
    return (seconds - first_step_seconds) * steps / (steps - 1)


def reseed(model, seed, epoch):
    """Makes an epoch's random draws (the model's random layers, Python's and NumPy's generators) a function of (seed, epoch) only.

    Without this they would continue from wherever the previous epochs left the generators, which
    a resumed run cannot recreate: a run resumed after epoch k would not be the uninterrupted run.
    """
    rng = np.random.default_rng([seed, epoch])
    # Not keras.utils.set_random_seed, which the run's start calls: its tf.random.set_seed makes
    # TensorFlow trace the training and validation steps again, 9 s an epoch of the CPU preset's
    # densenet on 2 cores (docs/performance.md), and the model's random layers do not read it.
    epoch_seed = int(rng.integers(2**31 - 1))
    random.seed(epoch_seed)
    np.random.seed(epoch_seed)
    # Every layer that draws random numbers (Dropout, ...) owns a SeedGenerator with this state.
    for state in (variable for variable in model.variables if variable.name == "seed_generator_state"):
        dtype = keras.backend.standardize_dtype(state.dtype)
        state.assign(np.array([rng.integers(2**31 - 1), 0], dtype=dtype))


def _checkpoint_path(run_dir, epoch):
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch-{epoch:03d}.keras"


def _copy_atomically(source, target):
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)


def _read_history(run_dir, epochs_completed):
    """The history of the completed epochs (a row written after the last checkpoint is dropped)."""
    history = read_history(run_dir) if epochs_completed else None
    if history is None:
        return []
    return history.head(epochs_completed).to_dict("records")


def _use_mixed_precision(config):
    if config.mixed_precision == "auto":
        # float16 pays on a GPU's tensor cores; on a CPU it is slower than float32 and less exact.
        return compute_device()["kind"] == "gpu"
    return bool(config.mixed_precision)
