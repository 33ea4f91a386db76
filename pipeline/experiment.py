"""What `python main.py [train]` does: one run or a study, trained and evaluated; or one continued.

run_experiment("densenet", "configs/tiny.yaml", {"limit": 200})           # one run
run_experiment("densenet", "configs/tiny.yaml", {"limit": 200}, folds=2)  # a study of two folds
resume_experiment("results/studies/20261123-101500-densenet-2folds")     # a stopped run or study
"""

import shutil
from pathlib import Path

from common.errors import ConfigError
from common.run_folder import LOCK_FILENAME
from common.study_folder import is_study_dir
from pipeline.run import resume_and_evaluate, train_and_evaluate
from pipeline.study import check_submission, open_study, run_study
from training import hardware_preset, load_config
from training.distribution import other_process_folder


def run_experiment(
    model=None, config_file=None, overrides=None, *, folds=None, seeds=None, submit=None, jobs=None, submit_options=None
):
    """Trains and evaluates one configuration, or a study: `model` "all" (the config file's study),
    `folds` (lesion-grouped K-fold), `seeds` (N seeds) or `submit` (its runs as jobs).

    Args:
        model: a registered model, "all", or None for the config file's (else the default).
        config_file: a YAML file of settings, or None for the preset of this machine (`hardware_preset`).
        overrides: settings over the file's, {name: value}.
        submit, jobs, submit_options: run a study's runs as jobs (`pipeline.cluster`).

    Returns:
        The run's `TrainedRun`, or the study's folder.
    """
    overrides = dict(overrides or {})
    is_study = model == "all" or bool(folds or seeds or submit)
    if submit is not None:
        check_submission(submit, submit_options)
    private = other_process_folder()
    if private is not None:
        # Process 1, 2, ... of a run over several hosts: the run again, in a folder of its own.
        if is_study:
            raise ConfigError(
                "a run over several hosts trains one run: run a study's runs as jobs (--submit), each on one host"
            )
        overrides["output_dir"] = private
    if config_file is None:
        config_file, reason = hardware_preset()
        print(
            f"No --config: {reason}, so the preset {config_file.relative_to(config_file.parent.parent)} (--config chooses another)"
        )
    if not is_study:
        return train_and_evaluate(load_config(model, config_file, overrides))
    study_dir = open_study(model, config_file, overrides, folds=folds, seeds=seeds)
    run_study(study_dir, submit=submit, jobs=jobs, submit_options=submit_options)
    return study_dir


def resume_experiment(folder, overrides=None, *, submit=None, jobs=None, submit_options=None):
    """Continues a stopped run or study from where it stopped, then evaluates what it trains.

    Args:
        folder: a run folder or a study folder.
        overrides: new values of `training.run.RESUME_OVERRIDES` only (the data may live elsewhere now).
        submit, jobs, submit_options: a study's remaining runs as jobs.

    Returns:
        The run's `TrainedRun`, or the study's folder.
    """
    folder = Path(folder)
    if submit is not None:
        check_submission(submit, submit_options)
    private = other_process_folder()
    if private is not None:
        if is_study_dir(folder) or submit:
            raise ConfigError(
                "a run over several hosts trains one run: run a study's runs as jobs (--submit), each on one host"
            )
        # Process 1, 2, ... of a run over several hosts continues a copy of the run, in a folder of its own.
        folder = Path(
            shutil.copytree(folder, Path(private) / folder.name, ignore=shutil.ignore_patterns(LOCK_FILENAME))
        )
    if is_study_dir(folder):
        run_study(folder, overrides, submit=submit, jobs=jobs, submit_options=submit_options)
        return folder
    if submit:
        raise ConfigError("--submit runs a study's runs as jobs: pass a study folder to --resume, or drop --submit")
    return resume_and_evaluate(folder, overrides)
