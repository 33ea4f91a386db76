"""A study: configurations x (K folds, or the single split) x seeds, every run on one split, resumable.

    study_dir = start_study(configs, folds=3, seeds=1, name="all-3folds", settings={...})
    run = train_planned_run(study_dir, planned, config, changes, record)  # for each planned run

The folder's layout is `common.study_folder`'s. `study.json` lists every planned run; a run's
folder is recorded there when the run starts, and the run marked finished once it is evaluated
(`pipeline.study.continue_study`, which evaluation may be imported by). So a study stopped anywhere
continues without retraining a finished run: an interrupted run resumes from its last completed
epoch, and the runs not yet started start.
"""

import json
from pathlib import Path

import yaml

from common.errors import ConfigError, DataError
from common.files import new_stamped_folder, write_json, write_text
from common.run_folder import CHECKPOINT_DIR, SPLIT_FILENAME, STATE_FILENAME, TRAINING_FILENAME
from common.study_folder import SETTINGS_FILENAME, STUDY_FILENAME, read_study
from dataset import assign_folds, save_split
from dataset.split import FOLD_COLUMN, TEST_FOLD
from training.run import prepare_run_data, resume_run, train_run
from training.trainer import check_weights


def start_study(configs, *, folds=None, seeds=1, name, settings):
    """Makes the study folder: its split (with folds), `study.yaml` and the plan in `study.json`.

    The split is the first config's (its `split` file, or one made with its seed); with `folds`,
    its non-test images are divided into K lesion-grouped, class-stratified folds, unless the
    split file has K folds already. Run i of `seeds` trains with the config's seed + i.

    Args:
        configs: the validated `TrainConfig`s of the configurations, in the order to train them.
        folds: K, or None for one run per seed on the split as it is.
        seeds: runs per configuration (and fold).
        name: the study's name, after the timestamp in its folder's name ("all-3folds").
        settings: what was asked, written to `study.yaml`.

    Returns:
        The study folder.

    Raises:
        ConfigError: `seeds` below 1, or a split file with another number of folds.
        UserError: weights that cannot be had (checked before anything is written).
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1; got {seeds}")
    check_weights(configs)
    base = configs[0]
    split = prepare_run_data(base, verbose=False).split
    if folds is not None:
        existing = sorted(set(split[FOLD_COLUMN]) - {TEST_FOLD}) if FOLD_COLUMN in split else []
        if existing and len(existing) != folds:
            raise ConfigError(
                f"{base.split} has {len(existing)} folds; --folds {folds} asks for {folds} (drop --folds, or pass it {len(existing)})"
            )
        split = split if existing else assign_folds(split, folds, seed=base.seed)
    study_dir = new_stamped_folder(Path(base.output_dir) / "studies", name)
    save_split(split, study_dir / SPLIT_FILENAME)
    write_text(
        study_dir / SETTINGS_FILENAME, yaml.safe_dump({**settings, "folds": folds, "seeds": seeds}, sort_keys=False)
    )
    seed_values = [base.seed + offset for offset in range(seeds)]
    runs = [
        {
            "configuration": config.configuration,
            "fold": fold,
            "seed": seed,
            "config": {**config.to_dict(), "split": str(study_dir / SPLIT_FILENAME), "fold": fold, "seed": seed},
            "run_dir": None,
            "finished": False,
            "seconds": None,
        }
        for config in configs
        for fold in (range(folds) if folds is not None else [None])
        for seed in seed_values
    ]
    write_json(study_dir / STUDY_FILENAME, {"name": name, "folds": folds, "seeds": seed_values, "runs": runs})
    return study_dir


def unfinished_study(configs, *, folds=None, seeds=1, settings):
    """The newest study of `configs[0].output_dir` that the same command started and did not finish, or None.

    The same command: the same `study.yaml` (models, config file, flags, folds, seeds) and the same
    resolved configurations (a config file edited since makes another study).
    """
    asked = {**settings, "folds": folds, "seeds": seeds}
    planned = [_what_is_trained(config.to_dict()) for config in configs]
    for study_dir in sorted((Path(configs[0].output_dir) / "studies").glob("*/"), reverse=True):
        try:
            if yaml.safe_load((study_dir / SETTINGS_FILENAME).read_text(encoding="utf-8")) != asked:
                continue
            runs = read_study(study_dir)["runs"]
        except (OSError, yaml.YAMLError, DataError):
            continue  # not a study of this kind; it is not ours to judge here
        trained = list(dict.fromkeys(json.dumps(_what_is_trained(run["config"]), sort_keys=True) for run in runs))
        if trained == [json.dumps(values, sort_keys=True) for values in planned] and not all(
            run["finished"] for run in runs
        ):
            return study_dir
    return None


def _what_is_trained(values):
    """A config's values without those a study sets per run."""
    return {key: value for key, value in values.items() if key not in ("split", "fold", "seed")}


def train_planned_run(study_dir, run, config, changes, record, verbose="auto"):
    """Trains one planned run of the study: resumed from its last completed epoch where it has one,
    else in a new run folder, which `record` is called with before training starts.

    Returns:
        The `TrainedRun`, to evaluate.
    """
    if run["run_dir"] is not None and resumable(run["run_dir"]):
        return resume_run(run["run_dir"], changes, verbose=verbose, study=Path(study_dir).name)
    if run["run_dir"] is not None:
        print(f"{run['run_dir']} stopped before its first epoch ended; starting the run again")
    return train_run(config, verbose=verbose, study=Path(study_dir).name, on_start=record)


def describe(run):
    """ "densenet fold 2 seed 0" """
    fold = "" if run["fold"] is None else f" fold {run['fold']}"
    return f"{run['configuration']}{fold} seed {run['seed']}"


def estimate(runs):
    """The time the unfinished runs will take, at the mean of the finished ones' (this sitting's) wall time."""
    measured = [run["seconds"] for run in runs if run["finished"] and run["seconds"] is not None]
    if not measured:
        return "known once a run has finished"
    seconds = sum(measured) / len(measured) * sum(not run["finished"] for run in runs)
    return f"~ {seconds:.0f} s" if seconds < 90 else f"~ {seconds / 60:.0f} min"


def resumable(run_dir):
    """Whether a started run has something to go on from: a finished training, or a checkpoint."""
    run_dir = Path(run_dir)
    return (run_dir / TRAINING_FILENAME).is_file() or (run_dir / CHECKPOINT_DIR / STATE_FILENAME).is_file()
