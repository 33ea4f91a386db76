"""A study's whole flow: plan it, train and evaluate each run, then write its summary.

    study_dir = open_study("densenet", "configs/tiny.yaml", {"limit": 200}, folds=2)
    run_study(study_dir)   # trains and evaluates what is not finished, then writes summary/

The plan, the folder and resuming a planned run are `training.study`'s; this module evaluates
each run as it finishes training and summarises the study, which training may not import.
"""

import importlib.util
import time
from pathlib import Path

import evaluation
from common.errors import UserError
from common.files import write_json
from common.run_folder import run_lock
from common.study_folder import STUDY_FILENAME, SUMMARY_DIR, read_study
from evaluation.robustness import SUBSETS
from pipeline.robustness import score_study_robustness
from pipeline.run import evaluate_trained_run
from training import TrainConfig, load_config
from training.config import study_configurations
from training.run import check_resume_overrides
from training.study import describe, estimate, start_study, train_planned_run, unfinished_study
from training.trainer import check_weights


def study_name(model, configuration, folds=None, seeds=None):
    """The study's name after the timestamp of its folder: "all-3folds", "densenet-meta-2folds-3seeds", ..."""
    return "-".join(
        [model if model == "all" else configuration]
        + ([f"{folds}folds"] if folds else [])
        + ([f"{seeds}seeds"] if seeds else [])
    )


def open_study(model, config_file, overrides=None, *, folds=None, seeds=None):
    """The study folder of the configurations (`model` "all": the config file's study) x folds x
    seeds: the unfinished one the same request started, else a new one.

    Raises:
        ConfigError: a bad setting, config file or number of folds.
    """
    overrides = dict(overrides or {})
    if model == "all":
        configs = [
            load_config(name, config_file, {**overrides, "metadata": metadata})
            for name, metadata in study_configurations(config_file)
        ]
    else:
        configs = [load_config(model, config_file, overrides)]
    settings = {"models": [config.configuration for config in configs], "config": str(config_file), "flags": overrides}
    study_dir = unfinished_study(configs, folds=folds, seeds=seeds or 1, settings=settings)
    if study_dir is not None:
        print(f"Continuing {study_dir}, which the same command started: its finished runs are kept")
        return study_dir
    name = study_name(model, configs[0].configuration, folds, seeds)
    study_dir = start_study(configs, folds=folds, seeds=seeds or 1, name=name, settings=settings)
    print(
        f"Study folder: {study_dir} (continue it with `python main.py --resume {study_dir}`, or the same command, if it stops)"
    )
    return study_dir


def check_submission(submit, options):
    """Raises UserError where `--submit` cannot run (submitit missing, an unknown executor parameter)."""
    if importlib.util.find_spec("submitit") is None:
        raise UserError("--submit needs submitit, which is not installed: pip install -e '.[cluster]'")
    from pipeline import cluster

    cluster.check_options(submit, options or {})


def run_study(study_dir, overrides=None, *, submit=None, jobs=None, submit_options=None):
    """The study's unfinished runs, trained and evaluated one after another in this process, or as
    jobs (`submit`: "local" or "slurm", `pipeline.cluster`); then its summary."""
    if submit is not None:
        from pipeline import cluster

        cluster.submit_study(study_dir, submit, jobs=jobs, options=submit_options, overrides=overrides)
        if submit == "local":
            print(f"{study_dir.name}: every run is finished; its summary is in {study_dir / SUMMARY_DIR}")
        return
    runs = continue_study(study_dir, overrides)
    score_configurations_robustness(study_dir, runs)
    if (study_dir / SUMMARY_DIR).exists():
        print(f"{study_dir.name}: every run is finished; its summary is in {study_dir / SUMMARY_DIR}")
        return
    evaluation.summarize_study(study_dir)


def score_configurations_robustness(study_dir, runs):
    """The corruption benchmark of each configuration whose runs scored theirs (`robustness: true`),
    from their files: no model runs again."""
    configurations = dict.fromkeys(run["configuration"] for run in runs if run["config"].get("robustness"))
    for configuration in configurations:
        score_study_robustness(Path(study_dir) / configuration, SUBSETS)


def continue_study(study_dir, overrides=None, verbose="auto"):
    """Trains and evaluates the study's runs that are not finished, in the planned order.

    A run counts as finished in `study.json` once it is evaluated, so a study stopped anywhere
    continues without retraining a finished run.

    Args:
        study_dir: the study folder (`training.study.start_study`'s).
        overrides: settings that may change (`RESUME_OVERRIDES`: where the data is, ...).
        verbose: Keras's progress output.

    Returns:
        The study's runs, as `study.json` lists them.

    Raises:
        UserError: another process is working on the study (its folder's lock, as a run's).
    """
    # One process per study: a second would take the first's run in progress for a stopped one,
    # train it and every later run again, and overwrite study.json.
    with run_lock(study_dir, what="study"):
        return _continue_study(Path(study_dir), overrides, verbose)


def _continue_study(study_dir, overrides, verbose):
    study_file = study_dir / STUDY_FILENAME
    study = read_study(study_dir)
    changes = check_resume_overrides(overrides)
    runs = study["runs"]
    configs = [TrainConfig.from_dict({**run["config"], **changes}, study_file) for run in runs]
    # Every pretrained weight is fetched before the first run that needs it starts.
    check_weights([config for config, run in zip(configs, runs) if not run["finished"]])

    def save():
        write_json(study_file, {**study, "runs": runs})

    for number, (run, config) in enumerate(zip(runs, configs), start=1):
        if run["finished"]:
            print(f"run {number} of {len(runs)} ({describe(run)}): finished in {run['run_dir']}, kept")
            continue
        print(f"run {number} of {len(runs)} ({describe(run)}); ETA for the study {estimate(runs)}")
        started = time.monotonic()

        def record(run_dir, run=run):
            run["run_dir"] = str(run_dir)
            save()

        evaluate_trained_run(train_planned_run(study_dir, run, config, changes, record, verbose))
        run.update(finished=True, seconds=round(time.monotonic() - started, 1))
        save()
    return runs
