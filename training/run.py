"""One training run from a config: data, run folder, fit.

    config = load_config("densenet", "configs/cpu.yaml")
    run = train_run(config)

Everything is checked (config, data folder, every image decodable) before the run folder is
made, so a bad input leaves nothing behind.
"""

from pathlib import Path
from typing import NamedTuple

import yaml

from dataset import PreparedData, prepare_data, save_split
from training.config import TrainConfig, load_config
from training.run_dir import create_run_dir, write_environment
from training.trainer import fit


class TrainedRun(NamedTuple):
    run_dir: Path
    config: TrainConfig
    data: PreparedData


# Settings a resumed run may change: where things are on this machine, not what is trained.
RESUME_OVERRIDES = ("data_dir", "cache_dir", "workers")


def prepare_run_data(config, verbose=True):
    """The data a config asks for (its split file, if it names one)."""
    return prepare_data(
        config.data_dir,
        image_size=config.image_size,
        seed=config.seed,
        split_file=config.split,
        split_fractions=config.split_fractions,
        limit=config.limit,
        drop_missing_images=config.drop_missing_images,
        cache_dir=config.cache_dir,
        verbose=verbose,
    )


def train_run(config, data=None, verbose="auto"):
    """Trains one configuration in a new run folder.

    Args:
        config: a validated `TrainConfig`.
        data: prepared data to reuse (same image size and split), or None to prepare it.
        verbose: Keras's progress output.

    Returns:
        A `TrainedRun`: the run folder, the config, and the `PreparedData` it trained on.
    """
    data = data or prepare_run_data(config)
    run_dir = create_run_dir(config.output_dir, config.run_name)
    print(f"Run folder: {run_dir}")
    config.save(run_dir / "config.yaml")
    save_split(data.split, run_dir / "split.csv")
    write_environment(run_dir)
    if config.metadata:
        data.encoder.save(run_dir / "metadata_encoder.json")
    fit(config, data, run_dir, verbose=verbose)
    return TrainedRun(run_dir, config, data)


def resume_run(run_dir, overrides=None, verbose="auto"):
    """Continues an interrupted run from its last completed epoch, with its own config and split.

    Args:
        run_dir: the interrupted run's folder.
        overrides: new values for `RESUME_OVERRIDES` only (the data may live elsewhere now).

    Returns:
        A `TrainedRun`, as `train_run` returns it.
    """
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.yaml)")
    saved = yaml.safe_load(config_file.read_text())
    changes = {key: value for key, value in (overrides or {}).items() if key in RESUME_OVERRIDES and value is not None}
    config = load_config(saved["model"], config_file, {**changes, "split": str(run_dir / "split.csv")})
    data = prepare_run_data(config)
    if not (run_dir / "training.json").is_file():
        fit(config, data, run_dir, resume=True, verbose=verbose)
    return TrainedRun(run_dir, config, data)


