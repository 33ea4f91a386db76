"""Train, evaluate and compare HAM10000 classifiers.

Examples:
    python main.py --model densenet --config configs/cpu.yaml      # train one model (train is the default)
    python main.py --model vgg16 --metadata --weights none          # VGG16 with the metadata head, from scratch
    python main.py --model densenet --set lr=0.0003 --set 'augmentation={rotation: 0.5}'   # any setting
    python main.py --model all --config configs/cpu.yaml            # the preset's study: one run per configuration
    python main.py --model all --folds 3                            # the study x 3 lesion-grouped folds, with fold ensembles
    python main.py --model densenet --seeds 3                       # three seeds of one configuration on one split
    python main.py --resume results/runs/20261123-101500-densenet   # continue an interrupted run
    python main.py --resume results/studies/20261123-101500-all     # continue an interrupted study
    python main.py --model all --folds 3 --submit local --jobs 4    # a study's runs as jobs, one per GPU (or --submit slurm)
    KERAS_BACKEND=jax python main.py --model densenet --set devices=4   # one run data-parallel over 4 GPUs (docs/scale-out.md)
    python main.py evaluate results/runs/RUN --data-dir DIR --labels LABELS.csv   # an external test set
    python main.py compare results/runs/RUN_A results/runs/RUN_B    # side-by-side, with paired tests
    python main.py compare results/studies/STUDY_A results/studies/STUDY_B   # studies: ensembles and per-fold tests
    python main.py predict results/runs/RUN photo.jpg FOLDER/ --output predictions.csv --explain gradcam/
    python main.py predict results/studies/STUDY/densenet photo.jpg   # a study configuration's fold ensemble
    python main.py serve results/runs/RUN --port 8000               # HTTP API and a page to try it (needs .[serve])
    python main.py robustness results/runs/RUN --subset validation  # balanced accuracy under 11 corruptions x 3 severities
    python main.py evaluate results/runs/RUN --image-size 160       # validation and test at a larger test-time size (FixRes)
    python main.py predict results/studies/STUDY/ensemble photo.jpg # the study's ensemble of configurations
    python main.py export results/runs/RUN --format onnx            # ONNX, LiteRT, SavedModel or OpenVINO, checked (needs .[export])
    python main.py export results/studies/STUDY/densenet --format litert --quantize int8   # the fold ensemble, int8
    python main.py serve results/runs/RUN/exports/onnx --engine onnx   # serve the export with onnxruntime
    python main.py --model densenet --config configs/cpu.yaml --track   # also log the run to MLflow (needs .[track])
    python main.py track results/reference/runs                     # log finished run folders to MLflow
    python main.py tune --model densenet --config configs/cpu.yaml --trials 12   # KerasTuner search (needs .[tune])

Each run leaves results/runs/<timestamp>-<model>[-meta]/ with its config, split, history, model,
test predictions, metrics, plots and report.md; a study (--model all, --folds, --seeds) also leaves
results/studies/<timestamp>-<name>/ with study.yaml, study.json (its runs), split.csv and summary/.
"""

import argparse
import errno
import os
import sys
from pathlib import Path

from common.console import native_stderr_silenced

# Before anything imports TensorFlow: unless --verbose, the console shows only this project's lines.
QUIET = "--verbose" not in sys.argv[1:]
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
        backend_error = error
    else:
        backend_error = None
        from common.errors import UserError  # noqa: E402
        from networks import get_model_entry, list_models  # noqa: E402
        from pipeline import commands  # noqa: E402
        from pipeline.commands import ENGINES, EXPORT_FORMATS, SETTINGS_EPILOG, settings_parser  # noqa: E402
        from training import TrainConfig  # noqa: E402
        from training.config import TUNERS  # noqa: E402
        from training.distribution import initialize_hosts  # noqa: E402
if backend_error is not None:  # said once stderr is back, with the status of every other one-line error
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    print(
        f"error: Keras cannot load its backend {backend!r} ({backend_error}): install it, or set KERAS_BACKEND to an installed one (tensorflow, jax)",
        file=sys.stderr,
    )
    sys.exit(2)

# Errors of the machine, not of the code: reported in one line, like bad input.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # `train` is the default command: `main.py --model cnn` means `main.py train --model cnn`.
    if not argv or argv[0] not in (*commands.HANDLERS, "-h", "--help"):
        argv.insert(0, "train")
    arguments = build_parser().parse_args(argv)
    try:
        initialize_hosts()  # a run over several hosts: before JAX is asked for its devices
        commands.HANDLERS[arguments.command](arguments)
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
        description=__doc__.split("\n")[0]
        + f"\n\nmodels:\n{models}\n  all       the study: the config file's `study:` list (configs/cpu.yaml: cnn, densenet, vgg16_bn, vgg16_bn-meta, efficientnet_lite0, efficientnet_lite0-meta), else cnn, densenet, vgg16, vgg16-meta",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="`python main.py COMMAND --help` describes each command; train is the default.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    console = argparse.ArgumentParser(add_help=False)
    console.add_argument(
        "--verbose", action="store_true", help="also show TensorFlow's and CUDA's own start-up log lines"
    )
    add_train_parser(subparsers, [console, settings_parser()])
    add_tune_parser(subparsers, [console, settings_parser()])
    add_inspection_parsers(subparsers, console)
    return parser


def add_train_parser(subparsers, parents):
    train = subparsers.add_parser(
        "train",
        help="train one model, or the config file's study (--model all), and evaluate on the test subset",
        description=__doc__.split("\n\n")[0] + "\n\nA setting's default is training/config.py's; a --config file "
        "sets it over that, and a flag or --set (one of them, once) over both.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=parents,
        epilog=SETTINGS_EPILOG,
    )
    what = train.add_argument_group("what to train")
    what.add_argument(
        "--model", help=f"one of {', '.join(list_models())}, or all (default: the config's, else {TrainConfig.model})"
    )
    what.add_argument(
        "--config",
        type=Path,
        help="YAML file of settings (configs/cpu.yaml, configs/gpu.yaml; default: the preset for this machine)",
    )
    what.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue an interrupted run from its last completed epoch, or an interrupted study "
        "(results/studies/<timestamp>-<name>), keeping its finished runs; only data_dir, cache_dir, workers, devices and compilation_cache may change",
    )
    study = train.add_argument_group(
        "studies (several runs on one split, summarised in results/studies/<timestamp>-<name>/)"
    )
    study.add_argument(
        "--folds",
        type=positive,
        metavar="K",
        help="lesion-grouped K-fold: one run per fold, each validating on its fold; the test subset stays fixed",
    )
    study.add_argument(
        "--seeds", type=positive, metavar="N", help="N runs per configuration (and fold), with seeds seed, seed+1, ..."
    )
    cluster = train.add_argument_group(
        "a study's runs as jobs, on a Slurm cluster or one per local GPU (docs/scale-out.md; needs `pip install -e .[cluster]`)"
    )
    cluster.add_argument(
        "--submit",
        choices=("local", "slurm"),
        help="submit each run as a submitit job: to Slurm, or to this machine (local, --jobs at a time, one per GPU)",
    )
    cluster.add_argument(
        "--jobs",
        type=positive,
        metavar="N",
        help="at most N jobs at once (local: default one per GPU; slurm: no limit)",
    )
    cluster.add_argument(
        "--submit-option",
        action="append",
        default=[],
        dest="submit_options",
        metavar="KEY=VALUE",
        help="a submitit executor parameter, repeatable: timeout_min=240, gpus_per_node=2, slurm_partition=gpu, ...",
    )


def add_tune_parser(subparsers, parents):
    tune = subparsers.add_parser(
        "tune",
        help="search hyper-parameters with KerasTuner, each trial a training run (needs `pip install -e .[tune]`)",
        description="Searches lr, weight decay (AdamW), head dropout, the model's width, the balance target, the "
        "augmentation strength and label smoothing, for the best validation balanced accuracy of the kept epoch; "
        "the test subset is never predicted. Leaves results/tuning/<timestamp>-<model>/ with tuning.json (every "
        "trial), best.yaml (for `--config`) and a run folder per trial. Settings other than metadata set the "
        "trials only: best.yaml keeps the config file's epochs, image size, ...",
        parents=parents,
        epilog=SETTINGS_EPILOG,
    )
    tune.add_argument(
        "--model", help=f"one of {', '.join(list_models())} (default: the config's, else {TrainConfig.model})"
    )
    tune.add_argument(
        "--config", type=Path, help="YAML file the search starts from (default: the preset for this machine)"
    )
    tune.add_argument(
        "--trials",
        type=positive,
        help="how many settings to try in all (default: 10; with --resume, more extends the search)",
    )
    tune.add_argument(
        "--tuner",
        choices=TUNERS,
        default="bayesian",
        help="KerasTuner's oracle; hyperband's largest budget is epochs (default: %(default)s)",
    )
    tune.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue a stopped search (results/tuning/<timestamp>-<model>); finished trials are kept",
    )
    tune.add_argument(
        "--search-dir",
        type=Path,
        metavar="DIR",
        help="the search folder to make, or to continue where it has tuning.json; a distributed search's chief and "
        "workers (KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT) all pass the same (docs/scale-out.md)",
    )
    tune.add_argument(
        "--chief-timeout",
        type=positive,
        default=600,
        metavar="SECONDS",
        help="a distributed search's worker: how long to wait for the chief, and for each of its answers, before giving up (default: %(default)s)",
    )


def add_inspection_parsers(subparsers, console):
    """The commands that read run folders: track, evaluate, compare, predict, serve, robustness, export."""
    track = subparsers.add_parser(
        "track",
        help="log finished run folders to MLflow (needs `pip install -e .[track]`)",
        description="Logs each run folder's config, history, test metrics and reports as an MLflow run, once: a folder "
        "already logged is skipped. The store is $MLFLOW_TRACKING_URI, else OUTPUT_DIR/mlflow.db.",
    )
    track.add_argument(
        "folders",
        type=Path,
        nargs="+",
        metavar="FOLDER",
        help="run folders, study folders, or folders of run folders (results/reference/runs)",
    )
    track.add_argument(
        "--output-dir",
        type=Path,
        default=Path(TrainConfig.output_dir),
        help="where the default sqlite store is (default: %(default)s)",
    )

    evaluate = subparsers.add_parser(
        "evaluate",
        help="score a trained run on its test subset again, or on an external labelled image set",
        description="Without --data-dir: recompute a run's metrics, plots and report from its predictions. "
        "With --data-dir: predict an external image set and write predictions, metrics, plots and a report for it.",
        parents=[console],
    )
    evaluate.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_DIR",
        help="a trained run folder (with model.keras); with --data-dir also a study's configuration, STUDY_DIR/<configuration>, "
        "or ensemble of configurations, STUDY_DIR/<a>+<b> or STUDY_DIR/ensemble",
    )
    evaluate.add_argument(
        "--data-dir", type=Path, help="folder of the external images (flat, or HAM10000's part_1/part_2)"
    )
    evaluate.add_argument(
        "--labels",
        type=Path,
        metavar="CSV",
        help="HAM10000-format metadata or ISIC ground truth (default: DATA_DIR/HAM10000_metadata.csv)",
    )
    evaluate.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="where to write (default: RUN_DIR/external/<data folder name>, STUDY_DIR/external/<configuration>/<data folder name>; an existing folder gets -2, -3, ...)",
    )
    evaluate.add_argument("--cache-dir", type=Path)
    evaluate.add_argument("--drop-missing-images", action="store_true")
    evaluate.add_argument(
        "--tta",
        action="store_true",
        help="also evaluate the mean over each image's eight rotations and reflections, into a tta/ folder beside the plain evaluation",
    )
    evaluate.add_argument(
        "--image-size",
        type=positive,
        metavar="N",
        help="predict at N px instead of the training size (test-time resolution): without --data-dir, the run's "
        "validation and test subsets into RUN_DIR/size-<N>px/, to choose N on validation",
    )

    compare = subparsers.add_parser(
        "compare", help="compare runs, or studies, evaluated on the same test images", parents=[console]
    )
    compare.add_argument(
        "run_dirs",
        type=Path,
        nargs="+",
        metavar="RUN_OR_STUDY_DIR",
        help="two or more run folders with predictions.csv trained on one split, or two or more study folders "
        "(their configurations' ensembles, and tests paired over folds or seeds where the studies share a split)",
    )
    compare.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="default: results/comparisons/<timestamp>; an existing folder gets -2, -3, ...",
    )

    predict = subparsers.add_parser(
        "predict",
        help="predict new images with a trained run, optionally with Grad-CAM explanations",
        description="One row per image, in the order given (a folder's images sorted by name): the predicted "
        "class, its name and the seven probabilities. Printed as CSV, or written to --output.",
    )
    predict.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_DIR",
        help="a trained run folder (with model.keras), or a study's configuration, STUDY_DIR/<configuration> (STUDY_DIR alone where it has one): the mean of its fold models",
    )
    predict.add_argument(
        "images", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER", help="JPEG or PNG files, or folders of them"
    )
    predict.add_argument(
        "--metadata",
        type=Path,
        metavar="CSV",
        help="image_id (file name without suffix), age, sex, localization; for metadata models",
    )
    predict.add_argument(
        "--tta", action="store_true", help="average over the eight rotations and reflections of each image"
    )
    predict.add_argument(
        "--output", type=Path, metavar="FILE", help="write a .csv or .json file instead of printing (never overwrites)"
    )
    predict.add_argument("--explain", type=Path, metavar="DIR", help="write a Grad-CAM figure per image into DIR")
    predict.add_argument(
        "--skip-unreadable", action="store_true", help="leave out files that are not readable images instead of failing"
    )
    predict.add_argument(
        "--image-size",
        type=positive,
        metavar="N",
        help="predict at N px instead of the training size (test-time resolution)",
    )
    predict.add_argument(
        "--calibrated",
        action="store_true",
        help="also give the probabilities with the temperature fitted on validation (the run's calibration.json; a fold ensemble's in its study summary)",
    )
    predict.add_argument(
        "--conformal",
        type=float,
        metavar="LEVEL",
        help="also give each image's conformal prediction set at this coverage level (0.9 or 0.95, as calibration.json holds them)",
    )
    predict.add_argument(
        "--conformal-kind",
        choices=("marginal", "class-conditional"),
        default="marginal",
        help="one threshold for all classes (default), or one per class so that each diagnosis is covered at the level",
    )

    serve = subparsers.add_parser(
        "serve",
        help="serve a trained run over HTTP: a JSON API and a page to try it (needs `pip install -e .[serve]`)",
        description="POST /predict, GET /health, GET /model, OpenAPI docs at /docs, and a page at /.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_DIR",
        help="a trained run folder (with model.keras), or a study's configuration, STUDY_DIR/<configuration> (STUDY_DIR alone "
        "where it has one): the mean of its fold models; or an export folder (main.py export), served by its runtime",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 exposes it to the network")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument(
        "--image-size",
        type=positive,
        metavar="N",
        help="predict at N px instead of the training size (test-time resolution)",
    )

    robustness = subparsers.add_parser(
        "robustness",
        help="score a run, or a study's configuration, under dermatology-specific corruptions (a stand-in for other clinics)",
        description="Balanced accuracy on the validation and test subsets under 11 corruptions (colour temperature, gamma, "
        "brightness, contrast, saturation, blur, JPEG, black corners, hair, centre crop, low resolution) at 3 severities, "
        "their mean and its ratio to clean. A run's results go into its robustness.json / .npz, metrics.json and report.md; "
        "a study configuration's (fold ensemble: test by every fold model, validation out of fold) into STUDY_DIR/robustness/. "
        "About 34 passes over each subset per model; a subset already scored is kept.",
        parents=[console],
    )
    robustness.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_OR_CONFIGURATION",
        help="a trained run folder, a study's configuration (STUDY_DIR/<configuration>), or ensemble of configurations (STUDY_DIR/<a>+<b>, STUDY_DIR/ensemble)",
    )
    robustness.add_argument(
        "--subset",
        default="both",
        choices=("validation", "test", "both"),
        help="which subset to score (default: %(default)s)",
    )
    robustness.add_argument(
        "--image-size",
        type=positive,
        metavar="N",
        help="predict at N px instead of the training size (test-time resolution)",
    )
    robustness.add_argument(
        "--seed", type=int, default=0, help="fixes the corruptions' random choices (default: %(default)s)"
    )
    robustness.add_argument("--cache-dir", type=Path)
    serve.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="keras for a run; onnx, litert, saved_model or openvino for an export folder of that format (default: what the folder holds)",
    )

    export = subparsers.add_parser(
        "export",
        help="export a trained run, or a study configuration's fold ensemble, as ONNX, LiteRT, SavedModel or OpenVINO "
        "(needs `pip install -e .[export]`)",
        description="Exports the inference graph (no augmentation or dropout; the model's preprocessing inside) with Keras's "
        "exporter, runs the file with its own runtime on the run's whole test subset against the Keras model, and keeps it "
        "only if it agrees (a float export: the same class on at least 99.9%% of the images). The folder holds the model file "
        "and export.json: inputs, outputs, classes, metadata encoding, source run, versions and the check's numbers.",
        parents=[console],
    )
    export.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_DIR",
        help="a trained run folder, or STUDY_DIR/<configuration>: its fold models as one averaging graph",
    )
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    export.add_argument(
        "--quantize",
        choices=("float16", "int8"),
        help="LiteRT post-training quantisation; int8 is calibrated on training-subset images",
    )
    export.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="the folder to make (default: RUN_DIR/exports/<format>[-<quantize>], -2, -3, ... where it exists)",
    )


def positive(text):
    """An argparse type: an integer of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


if __name__ == "__main__":
    sys.exit(main())
