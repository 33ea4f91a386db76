"""What each command of `main.py` does with its parsed arguments: `HANDLERS[arguments.command](arguments)`.

The settings' flags live here too (`settings_parser`), beside `overrides`, which reads them and
`--set` alike. Each handler turns the arguments into a call of this package, `evaluation` or `inference`; main.py
only parses. Errors the user can fix are raised as `UserError`, which main.py prints in one line.
"""

import argparse
import contextlib
import importlib.util
import sys
import textwrap
import warnings
from pathlib import Path

import evaluation
import inference
from common.errors import ConfigError, UserError
from common.files import timestamp
from common.study_folder import find_run_folders, is_study_dir
from evaluation.catalogue import CONSOLE, metrics_shown
from inference.exported import load_predictor
from networks import list_models
from pipeline.experiment import resume_experiment, run_experiment
from pipeline.robustness import check_subsets, score_robustness_of
from pipeline.run import evaluate_at_image_size, reevaluate_run, shown_value
from training import TrainConfig, hardware_preset, load_config
from training.config import parse_settings
from training.run import RESUME_OVERRIDES, check_resume_overrides
from training.trainer import check_weights

# The modules each export format needs on top of TensorFlow (the `export` extra).
EXPORT_PACKAGES = {
    "onnx": ("tf2onnx", "onnxruntime"),
    "litert": ("ai_edge_litert",),
    "saved_model": (),
    "openvino": ("openvino",),
}
EXPORT_FORMATS = tuple(EXPORT_PACKAGES)
# What serves a folder: Keras for a run, an export's own runtime for an export folder.
ENGINES = ("keras", *EXPORT_FORMATS)

SETTINGS_EPILOG = textwrap.fill(
    "settings (--set NAME=VALUE; training/config.py describes each): " + ", ".join(TrainConfig.defaults()), 100
)


class Setting(argparse.Action):
    """A flag that sets one setting of `TrainConfig`: it adds (flag, setting, value) to `settings`,
    where `--set` adds (flag, None, "NAME=VALUE"); `overrides` reads them all alike."""

    def __init__(self, option_strings, dest, **options):
        super().__init__(option_strings, "settings", default=(), **options)
        self.setting = None if dest == "set" else dest

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.const if self.nargs == 0 else values
        namespace.settings = [*namespace.settings, (option_string, self.setting, value)]


def settings_parser():
    """The settings a user types every day, as flags; `--set` gives any other."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("settings (each once: a flag or --set; over the --config file's)")
    setting(
        group,
        "--set",
        metavar="NAME=VALUE",
        help="any setting of training/config.py (listed below), its value in YAML; "
        "repeatable: --set ema=0.99 --set 'augmentation={rotation: 0.5}'",
    )
    setting(group, "--metadata", nargs=0, const=True, help="add the metadata head (age, sex, site)")
    setting(group, "--weights", help="pretrained models: imagenet, none, or a weights file")
    setting(group, "--epochs", type=int)
    setting(group, "--seed", type=int, help="fixes the split, sampling, augmentation and initial weights")
    setting(group, "--limit", type=int, metavar="N", help="use a stratified subset of N images (smoke runs)")
    setting(
        group, "--split", type=Path, metavar="FILE", help="reuse a split.csv (e.g. another run's) instead of making one"
    )
    setting(
        group,
        "--data-dir",
        type=Path,
        help="HAM10000 folder (default: $HAM10000_DIR, data/ham10000, ../shared/ham10000)",
    )
    setting(group, "--output-dir", type=Path, help="where runs/, studies/ and tuning/ go")
    setting(
        group,
        "--track",
        dest="tracking",
        nargs=0,
        const="mlflow",
        help="log the run to MLflow: $MLFLOW_TRACKING_URI, else "
        "OUTPUT_DIR/mlflow.db (needs `pip install -e .[track]`); --set track_model=true also logs model.keras",
    )
    return parent


def setting(group, flag, help=None, **options):
    """Adds `flag` (`--data-dir`: the setting data_dir), its help ending in the setting's default."""
    name = options.setdefault("dest", flag.removeprefix("--").replace("-", "_"))
    if options.get("nargs") != 0:
        options.setdefault("metavar", name.upper())  # not the shared `settings` that argparse would show
    if name in TrainConfig.defaults() and options.get("nargs") != 0:
        default = TrainConfig.defaults()[name]
        help = f"{help + ' ' if help else ''}(default: {'none' if default is None else default})"
    group.add_argument(flag, action=Setting, help=help, **options)


def overrides(arguments):
    """The settings the command line gives, {name: value}: each setting flag's (`--epochs 5`), and
    each `--set NAME=VALUE`'s, its value read as YAML. A setting given by a flag and by `--set` is
    refused; one flag given twice keeps its last value, as argparse's options do."""
    values, flags = {}, {}
    for flag, name, value in arguments.settings:
        if name is None:
            ((name, value),) = parse_settings([value]).items()
        if name in values and flags[name] != flag:
            raise ConfigError(f"{flags[name]} and {flag} both set {name}: give it once")
        values[name], flags[name] = str(value) if isinstance(value, Path) else value, flag
    return values


def train(arguments):
    settings = overrides(arguments)
    if (arguments.jobs or arguments.submit_options) and not arguments.submit:
        raise ConfigError("--jobs and --submit-option set the jobs of --submit: add --submit local or --submit slurm")
    jobs = {
        "submit": arguments.submit,
        "jobs": arguments.jobs,
        "submit_options": parse_settings(arguments.submit_options, "--submit-option", example="timeout_min=240"),
    }
    if arguments.resume:
        if arguments.model or arguments.config or arguments.folds or arguments.seeds:
            raise ConfigError(
                "--resume continues with the run's own config.yaml (or the study's plan): drop --model, --config, --folds and --seeds"
            )
        resume_experiment(arguments.resume, settings, **jobs)
        return
    run_experiment(arguments.model, arguments.config, settings, folds=arguments.folds, seeds=arguments.seeds, **jobs)


def tune(arguments):
    if importlib.util.find_spec("keras_tuner") is None:
        raise UserError("tuning needs KerasTuner, which is not installed: pip install -e '.[tune]'")
    from training import tuning

    if arguments.model == "all":
        raise ConfigError(f"tune searches one model at a time: pass --model {', '.join(list_models())}")
    settings = overrides(arguments)
    if arguments.resume:
        if arguments.model or arguments.config or arguments.search_dir:
            raise ConfigError(
                "--resume continues the search with its own settings: drop --model, --config and --search-dir"
            )
        tuning.continue_search(arguments.resume, check_resume_overrides(settings), trials=arguments.trials)
        return
    role = tuning.distributed_role()
    if role is not None and arguments.search_dir is None:
        raise ConfigError("a distributed search needs --search-dir DIR, the same folder for the chief and every worker")
    # A worker, or a chief run again, takes the search's own settings from DIR, and from the
    # command line (the same command everywhere) only where things are on this machine.
    local = {name: value for name, value in settings.items() if name in RESUME_OVERRIDES}
    if role == "worker":
        tuning.join_search(arguments.search_dir, local, timeout=arguments.chief_timeout)
        return
    if arguments.search_dir is not None and (arguments.search_dir / tuning.SEARCH_FILENAME).is_file():
        tuning.continue_search(arguments.search_dir, local, trials=arguments.trials)
        return
    config_file = arguments.config
    if config_file is None:
        config_file, reason = hardware_preset()
        print(
            f"No --config: {reason}, so the preset {config_file.relative_to(config_file.parent.parent)} (--config chooses another)"
        )
    trial_config = load_config(arguments.model, config_file, settings)
    final_config = load_config(
        trial_config.model, config_file, {key: settings[key] for key in ("metadata",) if key in settings}
    )
    check_weights([trial_config])
    tuning.start_search(
        trial_config,
        final_config,
        tuning.DEFAULT_TRIALS if arguments.trials is None else arguments.trials,
        arguments.tuner,
        arguments.search_dir,
    )


def track(arguments):
    from training.tracking import track_finished_run, tracking_uri

    for run_dir, study in find_run_folders(arguments.folders):
        run_id = track_finished_run(run_dir, arguments.output_dir, study=study)
        print(f"{run_dir}: {'already in MLflow, skipped' if run_id is None else f'logged as MLflow run {run_id}'}")
    print(f"MLflow store: {tracking_uri(arguments.output_dir)} (experiment 'ham10000')")


def evaluate(arguments):
    if arguments.data_dir is not None:
        metrics = evaluation.evaluate_external(
            arguments.run_dir,
            arguments.data_dir,
            arguments.labels,
            arguments.output,
            cache_dir=arguments.cache_dir,
            drop_missing=arguments.drop_missing_images,
            tta=arguments.tta,
            image_size=arguments.image_size,
        )
        if arguments.tta:
            print_beside_tta(metrics, metrics["tta"])
        return
    if arguments.image_size is not None:
        if arguments.tta:
            raise UserError("--tta with --image-size: evaluate one of them at a time")
        evaluate_at_image_size(arguments.run_dir, arguments.image_size, cache_dir=arguments.cache_dir)
        return
    metrics, tta = reevaluate_run(arguments.run_dir, tta=arguments.tta, cache_dir=arguments.cache_dir)
    print(f"Wrote the evaluation of {metrics['n_images']} test images to {arguments.run_dir}")
    if tta is not None:
        print_beside_tta(metrics, tta)
        print(f"Wrote the evaluation with test-time augmentation to {tta['folder']}")


def print_beside_tta(plain, tta):
    """The headline metrics without and with test-time augmentation, side by side."""
    for metric in metrics_shown(CONSOLE):
        shown = [shown_value(metrics[metric.key]) for metrics in (plain, tta)]
        print(f"{metric.name}: {shown[0]} plain, {shown[1]} with test-time augmentation (8 views)")


def compare(arguments):
    output = arguments.output or Path("results") / "comparisons" / timestamp()
    studies = [is_study_dir(folder) for folder in arguments.run_dirs]
    if any(studies) and not all(studies):
        raise UserError("compare takes run folders or study folders, not both: pass a study's runs, or only studies")
    # Both check their inputs before they create the folder, and never reuse an existing one.
    if all(studies):
        evaluation.compare_studies(arguments.run_dirs, output)
    else:
        evaluation.compare_runs(arguments.run_dirs, output)


@contextlib.contextmanager
def one_line_warnings():
    """Warnings (metadata missing, files skipped, an incomplete ensemble) as one line each, without the source line."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_: print(f"warning: {message}", file=sys.stderr)
        yield


def predict(arguments):
    if arguments.output is not None:
        inference.check_output_path(arguments.output)
    with one_line_warnings():
        predictor = load_predictor(arguments.run_dir, image_size=arguments.image_size)
        if arguments.explain is not None and not isinstance(predictor, inference.Predictor):
            raise UserError(
                f"{arguments.run_dir} is an export: Grad-CAM (--explain) needs the run's Keras model; pass the run folder"
            )
        table = inference.predict_files(
            predictor,
            arguments.images,
            metadata_path=arguments.metadata,
            tta=arguments.tta,
            skip_unreadable=arguments.skip_unreadable,
            explain_dir=arguments.explain,
            calibrated=arguments.calibrated,
            conformal=arguments.conformal,
            conformal_kind=arguments.conformal_kind,
        )
    if arguments.output is None:
        print(table.to_csv(index=False, float_format="%.4f"), end="")
    else:
        inference.write_predictions_table(arguments.output, table)
        print(f"Wrote predictions of {len(table)} images to {arguments.output}")


def serve(arguments):
    try:
        from inference.app import serve as serve_run
    except ModuleNotFoundError as error:
        raise UserError(f"serving needs FastAPI and uvicorn ({error}): pip install -e '.[serve]'") from None
    with one_line_warnings():
        serve_run(
            arguments.run_dir,
            host=arguments.host,
            port=arguments.port,
            image_size=arguments.image_size,
            engine=arguments.engine,
        )


def robustness(arguments):
    if not 0 <= arguments.seed < 2**32:
        raise UserError(f"--seed {arguments.seed}: a seed is 0 to {2**32 - 1}")
    score_robustness_of(
        arguments.run_dir,
        check_subsets(arguments.subset),
        image_size=arguments.image_size,
        seed=arguments.seed,
        cache_dir=arguments.cache_dir,
    )


def export(arguments):
    from inference.export import export_model

    missing = [name for name in EXPORT_PACKAGES[arguments.format] if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"a {arguments.format} export needs {', '.join(missing)}, which is not installed: pip install -e '.[export]'"
        )
    export_model(arguments.run_dir, arguments.format, quantize=arguments.quantize, output=arguments.output)


HANDLERS = {
    "train": train,
    "tune": tune,
    "track": track,
    "evaluate": evaluate,
    "compare": compare,
    "predict": predict,
    "serve": serve,
    "robustness": robustness,
    "export": export,
}
