"""The training stage: config, losses, the epoch rules, the fit loop with resumable checkpoints.

from training import load_config, train_run
config = load_config("densenet", "configs/cpu.yaml", {"epochs": 5})
run = train_run(config)  # run.run_dir, run.config, run.data
"""

from training.config import STUDY, ConfigError, TrainConfig, hardware_preset, load_config
from training.rules import plan_stages
from training.run import TrainedRun, prepare_run_data, resume_run, run_config, train_run
from training.trainer import fit

__all__ = [
    "STUDY",
    "ConfigError",
    "TrainConfig",
    "TrainedRun",
    "fit",
    "hardware_preset",
    "load_config",
    "plan_stages",
    "prepare_run_data",
    "resume_run",
    "run_config",
    "train_run",
]
