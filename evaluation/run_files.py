"""Reading what training left in a run folder (its layout is `common.run_folder`'s).

Only `predictions.csv` is required to evaluate a run; the others add the configuration, the
training curves and the split to the report when they are there.
"""

from dataclasses import dataclass, field

import pandas as pd

from common.run_folder import SPLIT_FILENAME, existing_run_dir, read_config, read_history, read_training_summary
from dataset.split import load_split


@dataclass(frozen=True)
class RunFiles:
    """The optional files of a run folder, empty or None where absent.

    Attributes:
        name: the folder's name, which labels the run in reports and comparisons.
        config: the resolved training configuration (`config.yaml`).
        training: the training summary (`training.json`): best epoch, wall time, parameters, ...
        history: one row per epoch (`history.csv`).
        split: `image_id, lesion_id, dx, subset` of every image (`split.csv`).
    """

    name: str
    config: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    history: pd.DataFrame | None = None
    split: pd.DataFrame | None = None


def read_run_files(run_dir):
    """Reads the optional files of a run folder.

    Raises:
        DataError: the folder does not exist, or one of its files is present but malformed.
    """
    run_dir = existing_run_dir(run_dir)
    split_path = run_dir / SPLIT_FILENAME
    return RunFiles(
        name=run_dir.name,
        config=read_config(run_dir),
        training=read_training_summary(run_dir),
        history=read_history(run_dir),
        split=load_split(split_path) if split_path.is_file() else None,
    )
