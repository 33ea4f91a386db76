"""The study folder: several runs (configurations x folds x seeds) on one split, and their summary.

    <output_dir>/studies/<YYYYmmdd-HHMMSS>-<name>/
        study.yaml   what was asked: the models, the config file, the flags, folds and seeds
        study.json   every planned run: its configuration, fold, seed and resolved config, and
                     its run folder from the moment it starts (`finished` once it is evaluated)
        split.csv    the split every run trains on (with a `fold` column for --folds)
        summary/     summary.md, summary.json, spread.png, ensembles/, comparison/
        run.lock     while a process trains the study's runs: its id and machine (`run_lock`)

The runs themselves are ordinary run folders in <output_dir>/runs/; a study kept with its runs
inside it (results/reference/) names them relative to the study folder. Training writes the study
folder (`training.study`), evaluation reads it; this module owns its layout.
"""

from pathlib import Path

from common.errors import DataError
from common.files import read_json

STUDY_FILENAME = "study.json"
SETTINGS_FILENAME = "study.yaml"
SUMMARY_DIR = "summary"
RUN_KEYS = ("configuration", "fold", "seed", "config", "run_dir", "finished", "seconds")


def is_study_dir(path):
    return (Path(path) / STUDY_FILENAME).is_file()


def read_study(study_dir):
    """The study's state (`study.json`): {"name", "folds", "seeds", "runs": [{RUN_KEYS}]}.

    Raises:
        DataError: the file is missing, damaged, or not a study's state.
    """
    path = Path(study_dir) / STUDY_FILENAME
    study = read_json(path, f"{study_dir}: not a study folder (no {STUDY_FILENAME})")
    runs = study.get("runs") if isinstance(study, dict) else None
    if not isinstance(runs, list) or not all(isinstance(run, dict) and set(RUN_KEYS) <= set(run) for run in runs):
        raise DataError(f"{path}: not a study's state (expected 'runs', each with {', '.join(RUN_KEYS)})")
    return study


def finished_runs(study_dir):
    """The study's evaluated runs, as {"configuration", "fold", "seed", "run_dir"} in planned order.

    A run folder given relative to the study folder (a study moved with its runs, such as
    results/reference/) is resolved against it.
    """
    return [
        {**{key: run[key] for key in ("configuration", "fold", "seed")}, "run_dir": str(Path(study_dir) / run["run_dir"])}
        for run in read_study(study_dir)["runs"]
        if run["finished"]
    ]
