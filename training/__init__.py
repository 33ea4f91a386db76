"""The training stage: config, losses, the fit loop with resumable checkpoints, run folders.

    from training import load_config, train_run
    config = load_config("densenet", "configs/cpu.yaml", {"epochs": 5})
    run = train_run(config)  # run.run_dir, run.config, run.data
"""

from training.config import STUDY, ConfigError, TrainConfig, load_config
from training.run import TrainedRun, prepare_run_data, resume_run, train_run
from training.trainer import fit, plan_stages

__all__ = [
    "STUDY",
    "ConfigError",
    "TrainConfig",
    "TrainedRun",
    "fit",
    "load_config",
    "plan_stages",
    "prepare_run_data",
    "resume_run",
    "train_run",
]
