"""The study folder: several runs (configurations x folds x seeds) on one split, and their summary.

    <output_dir>/studies/<YYYYmmdd-HHMMSS>-<name>/
        study.yaml   what was asked: the models, the config file, the flags, folds and seeds
        study.json   every planned run: its configuration, fold, seed and resolved config, and
                     its run folder from the moment it starts (`finished` once it is evaluated)
        split.csv    the split every run trains on (with a `fold` column for --folds)
        summary/     summary.md, summary.json, spread.png, ensembles/, comparison/,
                     configuration_ensemble.json (the ensemble of configurations chosen out of fold)
        robustness/  the corruption benchmark of each configuration scored (`main.py robustness`)
        external/<configuration>/<data folder>/   `evaluate STUDY_DIR/<configuration> --data-dir`
        run.lock     while a process trains the study's runs: its id and machine (`run_lock`)

The runs themselves are ordinary run folders in <output_dir>/runs/; a study kept with its runs
inside it (results/reference/) names them relative to the study folder. Training writes the study
folder (`training.study`), evaluation reads it; this module owns its layout.
"""

from pathlib import Path

from common.errors import DataError
from common.files import read_json
from common.run_folder import CONFIG_FILENAME

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
        {
            **{key: run[key] for key in ("configuration", "fold", "seed")},
            "run_dir": str(Path(study_dir) / run["run_dir"]),
        }
        for run in read_study(study_dir)["runs"]
        if run["finished"]
    ]


def find_run_folders(folders):
    """The run folders in `folders` (run folders, study folders, or folders of run folders), as
    (run folder, its study's name or None), a study's finished runs in planned order.

    Raises:
        DataError: a folder that is none of the three.
    """
    found = []
    for folder in map(Path, folders):
        if is_study_dir(folder):
            found += [(Path(run["run_dir"]), folder.resolve().name) for run in finished_runs(folder)]
        elif (folder / CONFIG_FILENAME).is_file():
            found.append((folder, None))
        else:
            run_dirs = sorted(path.parent for path in folder.glob(f"*/{CONFIG_FILENAME}"))
            if not run_dirs:
                raise DataError(f"{folder}: neither a run folder, a study folder, nor a folder of run folders")
            found += [(run_dir, None) for run_dir in run_dirs]
    return found
