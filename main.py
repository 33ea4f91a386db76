"""Train, evaluate and compare HAM10000 classifiers.

Examples:
    python main.py --model densenet --config configs/cpu.yaml      # train one model (train is the default)
    python main.py --model vgg16 --metadata --weights none          # VGG16 with the metadata head, from scratch
    python main.py --model all --config configs/cpu.yaml            # the study's four runs, then their comparison
    python main.py --model all --folds 3                            # the four x 3 lesion-grouped folds, with fold ensembles
    python main.py --model densenet --seeds 3                       # three seeds of one configuration on one split
    python main.py --resume results/runs/20261123-101500-densenet   # continue an interrupted run
    python main.py --resume results/studies/20261123-101500-all     # continue an interrupted study
    python main.py --model all --folds 3 --submit local --jobs 4    # a study's runs as jobs, one per GPU (or --submit slurm)
    KERAS_BACKEND=jax python main.py --model densenet --devices 4   # one run data-parallel over 4 GPUs (docs/scale-out.md)
    python main.py evaluate results/runs/RUN --data-dir DIR --labels LABELS.csv   # an external test set
    python main.py compare results/runs/RUN_A results/runs/RUN_B    # side-by-side, with paired tests
    python main.py compare results/studies/STUDY_A results/studies/STUDY_B   # studies: ensembles and per-fold tests
    python main.py predict results/runs/RUN photo.jpg FOLDER/ --output predictions.csv --explain gradcam/
    python main.py serve results/runs/RUN --port 8000               # HTTP API and a page to try it (needs .[serve])
    python main.py --model densenet --config configs/cpu.yaml --track   # also log the run to MLflow (needs .[track])
    python main.py track results/reference/runs                     # log finished run folders to MLflow
    python main.py tune --model densenet --config configs/cpu.yaml --trials 12   # KerasTuner search (needs .[tune])

Each run leaves results/runs/<timestamp>-<model>[-meta]/ with its config, split, history, model,
test predictions, metrics, plots and report.md; a study (--model all, --folds, --seeds) also leaves
results/studies/<timestamp>-<name>/ with study.yaml, study.json (its runs), split.csv and summary/.
"""

import argparse
import contextlib
import datetime
import errno
import importlib.util
import os
import shutil
import sys
import warnings
from pathlib import Path

VERBOSE_FLAG = "--verbose"


@contextlib.contextmanager
def native_stderr_silenced(silenced):
    """Sends what C++ code writes to stderr to /dev/null meanwhile.

    TensorFlow logs its start-up (oneDNN, CUDA, absl) before absl's logging is set up, where
    TF_CPP_MIN_LOG_LEVEL does not reach. Python's own errors are raised after stderr is back.
    """
    if not silenced:
        yield
        return
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


# Before anything imports TensorFlow: unless --verbose, the console shows only this project's lines.
QUIET = VERBOSE_FLAG not in sys.argv[1:]
if QUIET:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The process that submits a study's jobs and waits for them must not hold the GPUs' memory, which
# JAX otherwise takes (75% of each GPU) when it starts; its jobs inherit this and grow as needed.
if "--submit" in sys.argv[1:]:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# TensorFlow turns its oneDNN kernels on by default only on recent Intel CPUs; elsewhere (an AMD
# EPYC, say) it uses slower ones: on oneDNN a densenet epoch of the CPU preset takes 49 s there
# instead of 61, a vgg16_bn epoch 36 s instead of 90. `TF_ENABLE_ONEDNN_OPTS=0` turns it off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
with native_stderr_silenced(QUIET):
    try:
        import keras  # noqa: F401
    except (ImportError, ValueError) as error:  # KERAS_BACKEND=torch without torch; a name Keras does not know (a typo)
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        sys.exit(f"error: Keras cannot load its backend {backend!r} ({error}): install it, or set KERAS_BACKEND to an installed one (tensorflow, jax)")
    import evaluation  # noqa: E402
    import inference  # noqa: E402
    from common.errors import DataError, UserError  # noqa: E402
    from common.run_folder import CONFIG_FILENAME, LOCK_FILENAME, METRICS_FILENAME, REPORT_FILENAME  # noqa: E402
    from common.study_folder import SUMMARY_DIR, finished_runs, is_study_dir  # noqa: E402
    from dataset import BALANCE_MODES  # noqa: E402
    from networks import get_model_entry, list_models  # noqa: E402
    from training import ConfigError, TrainConfig, hardware_preset, load_config, prepare_run_data, resume_run, run_config, train_run  # noqa: E402
    from training.config import AUTO, LOSSES, TUNERS, parse_settings, study_configurations  # noqa: E402
    from training.distribution import initialize_hosts, other_process_folder  # noqa: E402
    from training.run import RESUME_OVERRIDES, check_resume_overrides  # noqa: E402
    from training.study import continue_study, start_study, unfinished_study  # noqa: E402
    from training.trainer import check_weights  # noqa: E402

COMMANDS = ("train", "tune", "track", "evaluate", "compare", "predict", "serve")
# `--model` picks the config file's `models:` entry, and "all" is the study: it is passed on its own.
NOT_OVERRIDES = ("model",)
# Errors of the machine, not of the code: reported in one line, like bad input.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # `train` is the default command: `main.py --model cnn` means `main.py train --model cnn`.
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "train")
    arguments = build_parser().parse_args(argv)
    try:
        initialize_hosts()  # a run over several hosts: before JAX is asked for its devices
        arguments.handler(arguments)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in DISK_ERRORS:
            raise
        remedy = "free some space" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "write elsewhere (--output-dir)"
        where = "" if error.filename is None else f"{error.filename}: "
        print(f"error: {where}{error.strerror} ({remedy})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = {
            "train": " (resume with `python main.py --resume RUN_DIR`, or STUDY_DIR for a study)",
            "tune": " (continue the search with `python main.py tune --resume SEARCH_DIR`)",
        }
        print(f"\ninterrupted{resume.get(arguments.command, '')}", file=sys.stderr)
        return 130
    return 0


def build_parser():
    models = "\n".join(f"  {name:<9} {get_model_entry(name).description}" for name in list_models())
    parser = argparse.ArgumentParser(
        prog="main.py",
        description=__doc__.split("\n")[0] + f"\n\nmodels:\n{models}\n  all       the study: the config file's `study:` list (configs/cpu.yaml: cnn, densenet, vgg16_bn, vgg16_bn-meta), else cnn, densenet, vgg16, vgg16-meta",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="`python main.py COMMAND --help` describes each command; train is the default.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    console = argparse.ArgumentParser(add_help=False)
    console.add_argument(VERBOSE_FLAG, action="store_true", help="also show TensorFlow's and CUDA's own start-up log lines")

    train = commands.add_parser(
        "train", help="train one model, or the study's four (--model all), and evaluate on the test subset",
        description=__doc__.split("\n\n")[0] + "\n\nA setting's default is training/config.py's; a --config file wins "
        "over it, and a flag over both. Settings without a flag are set in the config file.",
        formatter_class=argparse.RawDescriptionHelpFormatter, parents=[console],
    )
    what = train.add_argument_group("what to train")
    what.add_argument("--model", help=f"one of {', '.join(list_models())}, or all (default: the config's, else {TrainConfig.model})")
    add_setting(what, "metadata", action="store_true", help="add the metadata head (age, sex, site)")
    what.add_argument("--config", type=Path, help="YAML file of settings (configs/cpu.yaml, configs/gpu.yaml); flags win over it")
    add_setting(what, "weights", help="vgg16: imagenet, none, or a weights file")
    what.add_argument(
        "--resume", type=Path, metavar="DIR",
        help="continue an interrupted run from its last completed epoch, or an interrupted study "
        "(results/studies/<timestamp>-<name>), keeping its finished runs; only --data-dir, --cache-dir, --workers and --devices may change",
    )
    study = train.add_argument_group("studies (several runs on one split, summarised in results/studies/<timestamp>-<name>/)")
    study.add_argument("--folds", type=positive, metavar="K", help="lesion-grouped K-fold: one run per fold, each validating on its fold; the test subset stays fixed")
    study.add_argument("--seeds", type=positive, metavar="N", help="N runs per configuration (and fold), with seeds seed, seed+1, ...")
    cluster = train.add_argument_group("a study's runs as jobs, on a Slurm cluster or one per local GPU (docs/scale-out.md; needs `pip install -e .[cluster]`)")
    cluster.add_argument("--submit", choices=("local", "slurm"), help="submit each run as a submitit job: to Slurm, or to this machine (local, --jobs at a time, one per GPU)")
    cluster.add_argument("--jobs", type=positive, metavar="N", help="at most N jobs at once (local: default one per GPU; slurm: no limit)")
    cluster.add_argument(
        "--submit-option", action="append", default=[], dest="submit_options", metavar="KEY=VALUE",
        help="a submitit executor parameter, repeatable: timeout_min=240, gpus_per_node=2, slurm_partition=gpu, ...",
    )
    how = train.add_argument_group("how to train")
    add_setting(how, "epochs", type=int)
    add_setting(how, "batch_size", type=int)
    add_setting(how, "image_size", type=int)
    add_setting(how, "lr", type=float, help="learning rate")
    add_setting(how, "balance", choices=BALANCE_MODES, help="how the training subset is resampled each epoch")
    add_setting(how, "class_weights", action=argparse.BooleanOptionalAction, help="weigh the loss by class")
    add_setting(how, "loss", choices=LOSSES)
    add_setting(how, "seed", type=int, help="fixes the split, sampling, augmentation and initial weights")
    how.add_argument(
        "--set", action="append", default=[], dest="settings", metavar="KEY=VALUE",
        help="any setting of training/config.py, its value in YAML, over the config file; repeatable: "
        "--set ema=0.99 --set 'augmentation={rotation: 0.5}'",
    )
    data = train.add_argument_group("data and output")
    add_setting(data, "data_dir", type=Path, help="HAM10000 folder (default: $HAM10000_DIR, data/ham10000, ../shared/ham10000)")
    add_setting(data, "cache_dir", type=Path, help="decoded-image cache (default: $HAM10000_CACHE or ~/.cache/ham10000-study)")
    add_setting(data, "split", type=Path, metavar="FILE", help="reuse a split.csv (e.g. another run's) instead of making one")
    add_setting(data, "limit", type=int, metavar="N", help="use a stratified subset of N images (smoke runs)")
    add_setting(data, "drop_missing_images", action="store_true", help="leave out missing or unreadable images instead of failing")
    add_setting(data, "output_dir", type=Path, help="where runs/ and comparisons/ go")
    add_setting(data, "workers", type=int, help="threads preparing batches")
    add_setting(data, "devices", type=device_count, help="auto: every GPU JAX sees; N: the first N, the batch split between them (docs/scale-out.md)")
    add_tracking_flags(train)
    train.set_defaults(handler=run_train)

    tune = commands.add_parser(
        "tune", help="search hyper-parameters with KerasTuner, each trial a training run (needs `pip install -e .[tune]`)",
        description="Searches lr, weight decay (AdamW), head dropout, the model's width, the balance target, the "
        "augmentation strength and label smoothing, for the best validation balanced accuracy of the kept epoch; "
        "the test subset is never predicted. Leaves results/tuning/<timestamp>-<model>/ with tuning.json (every "
        "trial), best.yaml (for `--config`) and a run folder per trial. Flags other than --config, --metadata, "
        "--tuner and --trials set the trials only: best.yaml keeps the config file's epochs, image size, ...",
        parents=[console],
    )
    tune.add_argument("--model", help=f"one of {', '.join(list_models())} (default: the config's, else {TrainConfig.model})")
    add_setting(tune, "metadata", action="store_true", help="add the metadata head (age, sex, site)")
    tune.add_argument("--config", type=Path, help="YAML file the search starts from (default: the preset for this machine)")
    tune.add_argument("--trials", type=int, help="how many settings to try in all (default: 10; with --resume, more extends the search)")
    tune.add_argument("--tuner", choices=TUNERS, default="bayesian", help="KerasTuner's oracle; hyperband's largest budget is --epochs (default: %(default)s)")
    tune.add_argument("--resume", type=Path, metavar="DIR", help="continue a stopped search (results/tuning/<timestamp>-<model>); finished trials are kept")
    tune.add_argument(
        "--search-dir", type=Path, metavar="DIR",
        help="the search folder to make, or to continue where it has tuning.json; a distributed search's chief and "
        "workers (KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT) all pass the same (docs/scale-out.md)",
    )
    for name, kind in (("epochs", int), ("image_size", int), ("batch_size", int), ("seed", int), ("limit", int), ("workers", int)):
        add_setting(tune, name, type=kind, help="for the trials")
    for name in ("data_dir", "cache_dir", "output_dir"):
        add_setting(tune, name, type=Path)
    add_tracking_flags(tune)
    tune.set_defaults(handler=run_tune)

    track = commands.add_parser(
        "track", help="log finished run folders to MLflow (needs `pip install -e .[track]`)",
        description="Logs each run folder's config, history, test metrics and reports as an MLflow run, once: a folder "
        "already logged is skipped. The store is $MLFLOW_TRACKING_URI, else OUTPUT_DIR/mlflow.db.",
    )
    track.add_argument("folders", type=Path, nargs="+", metavar="FOLDER", help="run folders, study folders, or folders of run folders (results/reference/runs)")
    track.add_argument("--output-dir", type=Path, default=Path(TrainConfig.output_dir), help="where the default sqlite store is (default: %(default)s)")
    track.set_defaults(handler=run_track)

    evaluate = commands.add_parser(
        "evaluate", help="score a trained run on its test subset again, or on an external labelled image set",
        description="Without --data-dir: recompute a run's metrics, plots and report from its predictions. "
        "With --data-dir: predict an external image set and write predictions, metrics, plots and a report for it.",
        parents=[console],
    )
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a trained run folder (with model.keras)")
    evaluate.add_argument("--data-dir", type=Path, help="folder of the external images (flat, or HAM10000's part_1/part_2)")
    evaluate.add_argument("--labels", type=Path, metavar="CSV", help="HAM10000-format metadata or ISIC ground truth (default: DATA_DIR/HAM10000_metadata.csv)")
    evaluate.add_argument("--output", type=Path, metavar="DIR", help="where to write (default: RUN_DIR/external/<data folder name>; an existing folder gets -2, -3, ...)")
    evaluate.add_argument("--cache-dir", type=Path)
    evaluate.add_argument("--drop-missing-images", action="store_true")
    evaluate.add_argument(
        "--tta", action="store_true",
        help="also evaluate the mean over each image's eight rotations and reflections, into a tta/ folder beside the plain evaluation",
    )
    evaluate.set_defaults(handler=run_evaluate)

    compare = commands.add_parser("compare", help="compare runs, or studies, evaluated on the same test images", parents=[console])
    compare.add_argument(
        "run_dirs", type=Path, nargs="+", metavar="RUN_OR_STUDY_DIR",
        help="two or more run folders with predictions.csv trained on one split, or two or more study folders "
        "(their configurations' ensembles, and tests paired over folds or seeds where the studies share a split)",
    )
    compare.add_argument("--output", type=Path, metavar="DIR", help="default: results/comparisons/<timestamp>; an existing folder gets -2, -3, ...")
    compare.set_defaults(handler=run_compare)

    predict = commands.add_parser(
        "predict", help="predict new images with a trained run, optionally with Grad-CAM explanations",
        description="One row per image, in the order given (a folder's images sorted by name): the predicted "
        "class, its name and the seven probabilities. Printed as CSV, or written to --output.",
    )
    predict.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a trained run folder (with model.keras), or a study's configuration, STUDY_DIR/<configuration> (STUDY_DIR alone where it has one): the mean of its fold models")
    predict.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER", help="JPEG or PNG files, or folders of them")
    predict.add_argument("--metadata", type=Path, metavar="CSV", help="image_id (file name without suffix), age, sex, localization; for metadata models")
    predict.add_argument("--tta", action="store_true", help="average over the eight rotations and reflections of each image")
    predict.add_argument("--output", type=Path, metavar="FILE", help="write a .csv or .json file instead of printing (never overwrites)")
    predict.add_argument("--explain", type=Path, metavar="DIR", help="write a Grad-CAM figure per image into DIR")
    predict.add_argument("--skip-unreadable", action="store_true", help="leave out files that are not readable images instead of failing")
    predict.set_defaults(handler=run_predict)

    serve = commands.add_parser(
        "serve", help="serve a trained run over HTTP: a JSON API and a page to try it (needs `pip install -e .[serve]`)",
        description="POST /predict, GET /health, GET /model, OpenAPI docs at /docs, and a page at /.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a trained run folder (with model.keras), or a study's configuration, STUDY_DIR/<configuration> (STUDY_DIR alone where it has one): the mean of its fold models")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 exposes it to the network")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.set_defaults(handler=run_serve)
    return parser


def add_tracking_flags(parser):
    group = parser.add_argument_group("tracking")
    group.add_argument(
        "--track", dest="tracking", action="store_const", const="mlflow", default=None,
        help="log the run to MLflow: $MLFLOW_TRACKING_URI, else OUTPUT_DIR/mlflow.db (needs `pip install -e .[track]`; "
        "config: tracking: mlflow)",
    )
    add_setting(group, "track_model", action="store_true", help="with --track, also log model.keras")
def positive(text):
    """An argparse type: an integer of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def device_count(text):
    """An argparse type: "auto", or a number of devices."""
    return text if text == AUTO else positive(text)


def add_setting(group, name, help=None, **options):
    """Adds the flag of the `TrainConfig` field `name` (`--name-with-dashes`), its help showing the field's default.

    The flag's own default is None, "not given", so that a config file's value is not overridden.
    """
    if "default" not in (help or ""):
        default = TrainConfig.defaults()[name]
        help = f"{help + ' ' if help else ''}(default: {'none' if default is None else default})"
    group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=help, **options)


def setting_flags(arguments):
    """The `TrainConfig` fields that train's flags set, as `load_config` overrides (None where not given)."""
    given = vars(arguments)
    return {
        name: str(value) if isinstance(value, Path) else value
        for name, value in given.items()
        if name in TrainConfig.defaults() and name not in NOT_OVERRIDES
    }


def run_train(arguments):
    # A flag wins over --set, and both over the config file.
    overrides = {**parse_settings(arguments.settings), **{k: v for k, v in setting_flags(arguments).items() if v is not None}}
    submission(arguments)
    private = other_process_folder()
    if private is not None:
        # Process 1, 2, ... of a run over several hosts: the run again, in a folder of its own.
        if arguments.model == "all" or arguments.folds or arguments.seeds or arguments.submit or (arguments.resume and is_study_dir(arguments.resume)):
            raise ConfigError("a run over several hosts trains one run: run a study's runs as jobs (--submit), each on one host")
        if arguments.resume:
            arguments.resume = Path(shutil.copytree(arguments.resume, Path(private) / arguments.resume.name, ignore=shutil.ignore_patterns(LOCK_FILENAME)))
        else:
            overrides["output_dir"] = private
    if arguments.resume:
        if arguments.model or arguments.config or arguments.folds or arguments.seeds:
            raise ConfigError("--resume continues with the run's own config.yaml (or the study's plan): drop --model, --config, --folds and --seeds")
        if is_study_dir(arguments.resume):
            run_study(arguments.resume, arguments, overrides)
        else:
            if arguments.submit:
                raise ConfigError("--submit runs a study's runs as jobs: pass a study folder to --resume, or drop --submit")
            if (arguments.resume / METRICS_FILENAME).is_file():
                raise DataError(
                    f"{arguments.resume}: finished (trained and evaluated), nothing to resume; "
                    f"`python main.py evaluate {arguments.resume}` recomputes its evaluation"
                )
            finish(resume_run(arguments.resume, overrides))
        return
    config_file = arguments.config
    if config_file is None:
        config_file, reason = hardware_preset()
        print(f"No --config: {reason}, so the preset {config_file.relative_to(config_file.parent.parent)} (--config chooses another)")
    if arguments.model == "all" or arguments.folds or arguments.seeds or arguments.submit:
        train_study(arguments, config_file, overrides)
    else:
        finish(train_run(load_config(arguments.model, config_file, overrides)))


def train_study(arguments, config_file, overrides):
    """A study: the configurations (--model all: the four) x folds (--folds) x seeds (--seeds), then its summary."""
    if arguments.model == "all":
        configs = [load_config(model, config_file, {**overrides, "metadata": metadata}) for model, metadata in study_configurations(config_file)]
    else:
        configs = [load_config(arguments.model, config_file, overrides)]
    seeds = arguments.seeds or 1
    name = "-".join(
        [arguments.model if arguments.model == "all" else configs[0].configuration]
        + ([f"{arguments.folds}folds"] if arguments.folds else [])
        + ([f"{seeds}seeds"] if arguments.seeds else [])
    )
    settings = {
        "models": [config.configuration for config in configs],
        "config": str(config_file),
        "flags": {key: value for key, value in overrides.items() if value is not None},
    }
    study_dir = unfinished_study(configs, folds=arguments.folds, seeds=seeds, settings=settings)
    if study_dir is not None:
        print(f"Continuing {study_dir}, which the same command started: its finished runs are kept")
    else:
        study_dir = start_study(configs, folds=arguments.folds, seeds=seeds, name=name, settings=settings)
        print(f"Study folder: {study_dir} (continue it with `python main.py --resume {study_dir}`, or the same command, if it stops)")
    run_study(study_dir, arguments)


def submission(arguments):
    """--submit's executor parameters, checked before anything is made; None without --submit."""
    if (arguments.jobs or arguments.submit_options) and not arguments.submit:
        raise ConfigError("--jobs and --submit-option set the jobs of --submit: add --submit local or --submit slurm")
    if not arguments.submit:
        return None
    if importlib.util.find_spec("submitit") is None:
        raise UserError("--submit needs submitit, which is not installed: pip install -e '.[cluster]'")
    from training import cluster

    options = parse_settings(arguments.submit_options, "--submit-option")
    cluster.check_options(arguments.submit, options)
    return options


def run_study(study_dir, arguments, overrides=None):
    """The study's unfinished runs: one after another in this process, or as jobs (--submit)."""
    if not arguments.submit:
        finish_study(study_dir, overrides)
        return
    from training import cluster

    cluster.submit_study(
        study_dir, arguments.submit, jobs=arguments.jobs, options=submission(arguments),
        finish="main:finish", summarize="evaluation:summarize_study", overrides=overrides,
    )
    if arguments.submit == "local":
        print(f"{study_dir.name}: every run is finished; its summary is in {study_dir / SUMMARY_DIR}")


def finish_study(study_dir, overrides=None):
    """Trains and evaluates the study's unfinished runs, then writes its summary."""
    continue_study(study_dir, finish, overrides)
    if (study_dir / SUMMARY_DIR).exists():
        print(f"{study_dir.name}: every run is finished; its summary is in {study_dir / SUMMARY_DIR}")
        return
    evaluation.summarize_study(study_dir)


def finish(run):
    """Predicts the run's test subset with the kept model, then writes the gallery, metrics, plots and report.

    The gallery is optional: where it fails (a backbone whose feature map Grad-CAM cannot find), a
    warning says so and the evaluation is written all the same.
    """
    predictor = evaluation.Predictor.load(run.run_dir)
    options = {"with_metadata": run.config.metadata, "batch_size": run.config.batch_size, "workers": run.config.workers, "predictor": predictor}
    evaluation.predict_subset(run.run_dir, run.data, **options)
    if run.config.fold is not None:
        # The study's out-of-fold metrics pool every fold run's validation fold.
        evaluation.predict_subset(run.run_dir, run.data, subset="val", **options)
    try:
        # Before the evaluation, whose report shows it.
        inference.write_gallery(run.run_dir, run.data, predictor)
    except Exception as error:
        reason = f"{type(error).__name__}: {error}".strip().splitlines()[0]
        print(f"warning: the Grad-CAM gallery failed ({reason}); the report goes without it", file=sys.stderr)
    metrics = evaluation.evaluate_run(run.run_dir)
    run.tracker.finish(run.run_dir, with_model=run.config.track_model)
    # A metric is None where the test subset cannot define it (melanoma sensitivity without melanomas).
    shown = {key: "n/a" if metrics[key] is None else f"{metrics[key]:.3f}" for key in ("balanced_accuracy", "accuracy", "melanoma_sensitivity")}
    print(
        f"{run.run_dir.name}: test balanced accuracy {shown['balanced_accuracy']}, accuracy {shown['accuracy']}, "
        f"melanoma sensitivity {shown['melanoma_sensitivity']}; report: {run.run_dir / REPORT_FILENAME}"
    )


def run_tune(arguments):
    if importlib.util.find_spec("keras_tuner") is None:
        raise UserError("tuning needs KerasTuner, which is not installed: pip install -e '.[tune]'")
    from training import tuning

    if arguments.model == "all":
        raise ConfigError(f"tune searches one model at a time: pass --model {', '.join(list_models())}")
    overrides = setting_flags(arguments)
    if arguments.resume:
        if arguments.model or arguments.config or arguments.search_dir:
            raise ConfigError("--resume continues the search with its own settings: drop --model, --config and --search-dir")
        tuning.continue_search(arguments.resume, check_resume_overrides(overrides), trials=arguments.trials)
        return
    role = tuning.distributed_role()
    if role is not None and arguments.search_dir is None:
        raise ConfigError("a distributed search needs --search-dir DIR, the same folder for the chief and every worker")
    # A worker, or a chief run again, takes the search's own settings from DIR, and from the flags
    # (the same command everywhere) only where things are on this machine.
    local = {name: value for name, value in overrides.items() if name in RESUME_OVERRIDES and value is not None}
    if role == "worker":
        tuning.join_search(arguments.search_dir, local)
        return
    if arguments.search_dir is not None and (arguments.search_dir / tuning.SEARCH_FILENAME).is_file():
        tuning.continue_search(arguments.search_dir, local, trials=arguments.trials)
        return
    config_file = arguments.config
    if config_file is None:
        config_file, reason = hardware_preset()
        print(f"No --config: {reason}, so the preset {config_file.relative_to(config_file.parent.parent)} (--config chooses another)")
    trial_config = load_config(arguments.model, config_file, overrides)
    final_config = load_config(trial_config.model, config_file, {"metadata": arguments.metadata})
    check_weights([trial_config])
    tuning.start_search(trial_config, final_config, arguments.trials or tuning.DEFAULT_TRIALS, arguments.tuner, arguments.search_dir)


def run_track(arguments):
    from training.tracking import track_finished_run, tracking_uri

    run_dirs = []
    for folder in arguments.folders:
        if is_study_dir(folder):
            run_dirs += [(Path(run["run_dir"]), folder.resolve().name) for run in finished_runs(folder)]
        elif (folder / CONFIG_FILENAME).is_file():
            run_dirs.append((folder, None))
        else:
            found = sorted(path.parent for path in folder.glob(f"*/{CONFIG_FILENAME}"))
            if not found:
                raise DataError(f"{folder}: neither a run folder, a study folder, nor a folder of run folders")
            run_dirs += [(run_dir, None) for run_dir in found]
    for run_dir, study in run_dirs:
        run_id = track_finished_run(run_dir, arguments.output_dir, study=study)
        print(f"{run_dir}: {'already in MLflow, skipped' if run_id is None else f'logged as MLflow run {run_id}'}")
    print(f"MLflow store: {tracking_uri(arguments.output_dir)} (experiment 'ham10000')")


def run_evaluate(arguments):
    if arguments.data_dir is not None:
        metrics = evaluation.evaluate_external(
            arguments.run_dir, arguments.data_dir, arguments.labels, arguments.output,
            cache_dir=arguments.cache_dir, drop_missing=arguments.drop_missing_images, tta=arguments.tta,
        )
        if arguments.tta:
            print_beside_tta(metrics, metrics["tta"])
        return
    metrics = evaluation.evaluate_run(arguments.run_dir)
    print(f"Wrote the evaluation of {metrics['n_images']} test images to {arguments.run_dir}")
    if arguments.tta:
        config = run_config(arguments.run_dir, {"cache_dir": arguments.cache_dir and str(arguments.cache_dir)})
        predictions = evaluation.predict_subset(
            arguments.run_dir, prepare_run_data(config), with_metadata=config.metadata,
            batch_size=config.batch_size, workers=config.workers, tta=True,
        )
        print_beside_tta(metrics, evaluation.evaluate_tta(arguments.run_dir, predictions.parent))
        print(f"Wrote the evaluation with test-time augmentation to {predictions.parent}")


def print_beside_tta(plain, tta):
    """The headline metrics without and with test-time augmentation, side by side."""
    for key in ("balanced_accuracy", "accuracy", "melanoma_sensitivity"):
        shown = ["n/a" if metrics[key] is None else f"{metrics[key]:.3f}" for metrics in (plain, tta)]
        print(f"{key.replace('_', ' ')}: {shown[0]} plain, {shown[1]} with test-time augmentation (8 views)")


def run_compare(arguments):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    output = arguments.output or Path("results") / "comparisons" / stamp
    studies = [is_study_dir(folder) for folder in arguments.run_dirs]
    if any(studies) and not all(studies):
        raise UserError("compare takes run folders or study folders, not both: pass a study's runs, or only studies")
    # Both check their inputs before they create the folder, and never reuse an existing one.
    if all(studies):
        evaluation.compare_studies(arguments.run_dirs, output)
    else:
        evaluation.compare_runs(arguments.run_dirs, output)


def run_predict(arguments):
    if arguments.output is not None:
        inference.check_output_path(arguments.output)
    with warnings.catch_warnings():
        # Warnings (metadata missing, files skipped) as one line each, without the source line.
        warnings.showwarning = lambda message, *_: print(f"warning: {message}", file=sys.stderr)
        predictor = inference.Predictor.load(arguments.run_dir)
        table = inference.predict_files(
            predictor, arguments.images, metadata_path=arguments.metadata, tta=arguments.tta,
            skip_unreadable=arguments.skip_unreadable, explain_dir=arguments.explain,
        )
    if arguments.output is None:
        print(table.to_csv(index=False, float_format="%.4f"), end="")
    else:
        inference.write_predictions_table(arguments.output, table)
        print(f"Wrote predictions of {len(table)} images to {arguments.output}")


def run_serve(arguments):
    try:
        from inference.app import serve
    except ModuleNotFoundError as error:
        raise UserError(f"serving needs FastAPI and uvicorn ({error}): pip install -e '.[serve]'") from None
    serve(arguments.run_dir, host=arguments.host, port=arguments.port)


if __name__ == "__main__":
    sys.exit(main())
