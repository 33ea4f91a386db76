"""One training run from a config: data, run folder, fit.

    config = load_config("densenet", "configs/cpu.yaml")
    run = train_run(config)

Everything is checked (config, data folder, every image decodable, the weights) before the run
folder is made, so a bad input leaves nothing behind. While a process trains in a run folder, it
holds the folder's lock: a second `resume_run` of it is refused.
"""

import typing
from pathlib import Path
from typing import NamedTuple

from common.errors import DataError
from common.files import check_writable
from common.run_folder import (
    CHECKPOINT_DIR,
    CONFIG_FILENAME,
    ENCODER_FILENAME,
    SPLIT_FILENAME,
    STATE_FILENAME,
    TRAINING_FILENAME,
    create_run_dir,
    run_lock,
)
from dataset import PreparedData, prepare_data, save_split
from training.compilation import use_compilation_cache
from training.config import ConfigError, TrainConfig, read_yaml
from training.distribution import training_devices
from training.environment import write_environment
from training.tracking import require_mlflow
from training.trainer import build_model, fit


class TrainedRun(NamedTuple):
    run_dir: Path
    config: TrainConfig
    data: PreparedData
    # The study the run is part of (an MLflow tag, logged once the run is evaluated), or None.
    study: typing.Optional[str] = None


# Settings a resumed run may change: where things are on this machine, not what is trained (the
# batch is the global batch on any number of devices).
RESUME_OVERRIDES = ("data_dir", "cache_dir", "workers", "devices", "compilation_cache")


def prepare_run_data(config, verbose=True):
    """The data a config asks for (its split file, if it names one)."""
    return prepare_data(
        config.data_dir,
        image_size=config.image_size,
        seed=config.seed,
        split_file=config.split,
        fold=config.fold,
        split_fractions=config.split_fractions,
        limit=config.limit,
        drop_missing_images=config.drop_missing_images,
        cache_dir=config.cache_dir,
        verbose=verbose,
    )


def train_run(config, data=None, verbose="auto", study=None, on_start=None):
    """Trains one configuration in a new run folder.

    Args:
        config: a validated `TrainConfig`.
        data: prepared data to reuse (same image size and split), or None to prepare it.
        verbose: Keras's progress output.
        study: the name of the study the run is part of (an MLflow tag), or None.
        on_start: called with the run folder once it is made, before training (a study records it).

    Returns:
        A `TrainedRun`: the run folder, the config, the `PreparedData` it trained on, and `study`.
    """
    check_writable(config.output_dir)
    if config.tracking:
        require_mlflow()
    data = data or prepare_run_data(config)
    use_compilation_cache(config)
    with training_devices(config):
        # Building the model loads its weights, the last thing that can fail before training.
        model = build_model(config, data.encoder.size if config.metadata else 0)
        run_dir = create_run_dir(config.output_dir, config.run_name)
        print(f"Run folder: {run_dir}")
        if on_start is not None:
            on_start(run_dir)
        with run_lock(run_dir):
            config.save(run_dir / CONFIG_FILENAME)
            save_split(data.split, run_dir / SPLIT_FILENAME)
            write_environment(run_dir)
            if config.metadata:
                data.encoder.save(run_dir / ENCODER_FILENAME)
            fit(config, data, run_dir, model=model, verbose=verbose)
    return TrainedRun(run_dir, config, data, study)


def check_resume_overrides(overrides):
    """The overrides a resumed run takes (`RESUME_OVERRIDES`; None is null: `compilation_cache: none`); ConfigError for any other."""
    changes = dict(overrides or {})
    refused = sorted(set(changes) - set(RESUME_OVERRIDES))
    if refused:
        raise ConfigError(
            f"a resumed run keeps the settings it started with: it can change {', '.join(RESUME_OVERRIDES)}, "
            f"not {', '.join(refused)} (start a new run to change them)"
        )
    return changes


def run_config(run_dir, overrides=None):
    """A run folder's own config, set to its own split, with `overrides` of `RESUME_OVERRIDES` only.

    Raises:
        ConfigError: `overrides` sets anything else, or the folder's `config.yaml` is malformed.
        DataError: the folder is not a run folder.
    """
    run_dir = Path(run_dir)
    config_file = run_dir / CONFIG_FILENAME
    if not config_file.is_file():
        raise DataError(f"{run_dir}: not a run folder (no {CONFIG_FILENAME})")
    changes = check_resume_overrides(overrides)
    saved = read_yaml(config_file)
    if "model" not in saved:
        raise ConfigError(f"{config_file}: has no 'model' setting (is it a run's config.yaml?)")
    return TrainConfig.from_dict({**saved, **changes, "split": str(run_dir / SPLIT_FILENAME)}, config_file)


def resume_run(run_dir, overrides=None, verbose="auto", study=None):
    """Continues an interrupted run from its last completed epoch, with its own config and split.

    A run stopped before its first epoch ended (no checkpoint yet) trains from epoch 1. A run
    whose training finished (it has `training.json`) is not trained further; its `TrainedRun` is
    returned for the evaluation that may not have run.

    Args:
        run_dir: the interrupted run's folder.
        overrides: new values for `RESUME_OVERRIDES` only (the data may live elsewhere now).
        study: the name of the study the run is part of, or None.

    Returns:
        A `TrainedRun`, as `train_run` returns it.

    Raises:
        ConfigError: `overrides` sets anything else, or the folder's `config.yaml` is malformed.
        DataError: the folder is not a run folder, or its checkpoint is damaged.
        UserError: another process is training in the folder.
    """
    run_dir = Path(run_dir)
    config = run_config(run_dir, overrides)
    with run_lock(run_dir):
        data = prepare_run_data(config)
        if (run_dir / TRAINING_FILENAME).is_file():
            print(f"{run_dir.name} has finished training; nothing to resume")
        elif not (run_dir / CHECKPOINT_DIR / STATE_FILENAME).is_file():
            print(f"{run_dir.name} stopped before its first epoch ended; training it from epoch 1")
            fit(config, data, run_dir, verbose=verbose)
        else:
            use_compilation_cache(config)
            with training_devices(config):
                fit(config, data, run_dir, resume=True, verbose=verbose)
    return TrainedRun(run_dir, config, data, study)
