"""Hyper-parameter search with KerasTuner, each trial a training run of this project's trainer.

    python main.py tune --model densenet --config configs/cpu.yaml --trials 12 --set image_size=48
    python main.py tune --resume results/tuning/20261125-101500-densenet

KerasTuner's oracle (Bayesian optimisation, or Hyperband) proposes the settings; `RunTuner` trains
each proposal with `train_run`, as `python main.py train` would, into the search folder's `runs/`,
and reports back the objective: the validation balanced accuracy of the kept epoch, chosen as
every run chooses it (`training.rules`: the best mean over `selection_window` epochs). Trials
train on the split's training subset and are scored on its validation subset: no trial predicts
the test subset, which stays for the final run.

KerasTuner is an optional install (`pip install -e '.[tune]'`); main.py checks for it.

A distributed search is KerasTuner's own: every process runs the same command with `--search-dir
DIR` on a disk they share and KerasTuner's variables `KERASTUNER_ORACLE_IP` and
`KERASTUNER_ORACLE_PORT` (the chief's address) and `KERASTUNER_TUNER_ID`: `chief` for the process
that holds the oracle and writes best.yaml at the end, any other id (`tuner0`, `tuner1`, ...) for
the workers, which ask it for values and train the trials (docs/scale-out.md has a Slurm script).

The search folder, `<output_dir>/tuning/<stamp>-<model>[-meta]/`:

    tuning.json    the search's settings, each trial's values and run folder as it starts ("started")
                   and, as it finishes, its score ("results")
    best.yaml      the best trial's settings over the config the search started from:
                   `python main.py --model M --config best.yaml` trains it for real
    keras_tuner/   KerasTuner's project (the oracle's state): `--resume` continues the search
    runs/          one run folder per trial
"""

import dataclasses
import ipaddress
import json
import os
import socket
import time
from pathlib import Path

import keras
import keras_tuner

from common.errors import DataError, UserError
from common.files import file_lock, new_stamped_folder, write_json
from common.run_folder import TRAINING_FILENAME
from networks import AugmentationOptions, get_model_entry, model_options
from training.config import MAX_SEED, TUNERS, TrainConfig
from training.run import RESUME_OVERRIDES, prepare_run_data, resume_run, train_run
from training.tracking import log_finished_run, tracking_uri

SEARCH_FILENAME = "tuning.json"
SEARCH_LOCK = "tuning.json.lock"  # held while a process updates tuning.json (the workers of a distributed search)
BEST_FILENAME = "best.yaml"
OBJECTIVE = "val_balanced_accuracy"
DEFAULT_TRIALS = 10
# Multipliers of the model's width option (densenet's growth rate, the cnn's filters, vgg16_bn's width).
WIDTH_SCALES = (0.5, 0.75, 1.0, 1.5, 2.0)
# The largest value of each augmentation strength (`networks.AugmentationOptions`).
AUGMENTATION_LIMITS = {
    field.name: 0.5 if field.name == "saturation" else 1.0 for field in dataclasses.fields(AugmentationOptions)
}


def search_space(config):
    """KerasTuner's hyper-parameters for a config: the settings that matter, around its values.

    lr (a tenth to ten times the config's), weight decay (with AdamW), head dropout, the model's
    width, the balance target ("combined" balancing), the augmentation strength (a multiplier of
    the config's `augmentation`, if it has any) and label smoothing (not with the cost loss).
    """
    space = keras_tuner.HyperParameters()
    space.Float("lr", config.lr / 10, config.lr * 10, sampling="log", default=config.lr)
    space.Float("weight_decay", 1e-5, 1e-1, sampling="log", default=1e-4)
    space.Float("dropout", 0.0, 0.6, step=0.1, default=config.head_options.dropout)
    if get_model_entry(config.model).width is not None:  # a pretrained network's width is its weights'
        space.Choice("width", WIDTH_SCALES, default=1.0)
    if config.balance == "combined":
        space.Int(
            "balance_target",
            max(config.balance_target // 2, 1),
            config.balance_target * 2,
            sampling="log",
            default=config.balance_target,
        )
    if config.augment and config.augmentation_options.active:
        space.Float("augmentation", 0.0, 2.0, step=0.25, default=1.0)
    if config.loss != "cost":
        space.Float("label_smoothing", 0.0, 0.2, step=0.05, default=config.label_smoothing)
    return space


def apply_values(config, values):
    """The config with a trial's hyper-parameter values (KerasTuner's own "tuner/..." ignored)."""
    changes = {"optimizer": "adamw"}
    for name in ("lr", "weight_decay", "balance_target"):
        if name in values:
            changes[name] = values[name]
    if "label_smoothing" in values:
        changes["label_smoothing"] = round(values["label_smoothing"], 4)  # a step of 0.05, without float noise
    if "dropout" in values:
        changes["head"] = {**config.head, "dropout": round(values["dropout"], 4)}
    if "width" in values:
        changes["model_options"] = {**config.model_options, **_scaled_width(config, values["width"])}
    if "augmentation" in values:
        changes["augmentation"] = {
            name: round(min(strength * values["augmentation"], AUGMENTATION_LIMITS[name]), 4)
            for name, strength in config.augmentation.items()
        }
    if "tuner/epochs" in values:  # Hyperband: the trial's budget, with as much of the warm-up as it holds
        changes["epochs"] = values["tuner/epochs"]
        changes["warmup_epochs"] = min(config.warmup_epochs, values["tuner/epochs"] - 1)
    return TrainConfig.from_dict({**config.to_dict(), **changes}, "tuning")


def _scaled_width(config, scale):
    return get_model_entry(config.model).width.scaled(model_options(config.model, config.model_options), scale)


DISTRIBUTED_VARIABLES = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")


def distributed_role():
    """ "chief" or "worker" in a distributed search (KerasTuner's variables set), else None.

    Raises:
        UserError: some of the variables are set, not all; the chief's address is not one
            (`oracle_address`); or, on the chief, it cannot listen there.
    """
    if not any(os.environ.get(name) for name in DISTRIBUTED_VARIABLES):
        return None
    missing = [name for name in DISTRIBUTED_VARIABLES if not os.environ.get(name)]
    if missing:
        raise UserError(
            f"a distributed search needs {', '.join(DISTRIBUTED_VARIABLES)}; {', '.join(missing)} not set (docs/scale-out.md)"
        )
    host, port = oracle_address()
    if "chief" not in os.environ["KERASTUNER_TUNER_ID"]:
        return "worker"
    # gRPC would fail with a traceback, or listen elsewhere and wait for workers that never come.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserError(
                f"the chief cannot listen on {host}:{port} ({error.strerror}): KERASTUNER_ORACLE_IP must be this machine's "
                "address and KERASTUNER_ORACLE_PORT a free port"
            ) from None
    return "chief"


def oracle_address():
    """(host, port) of the chief, from KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT.

    Raises:
        UserError: the port is not a number from 1 to 65535, or the host is not an IP address or
            a name this machine resolves.
    """
    host, port = os.environ["KERASTUNER_ORACLE_IP"].strip(), os.environ["KERASTUNER_ORACLE_PORT"].strip()
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"KERASTUNER_ORACLE_PORT={port!r}: a port is a whole number from 1 to 65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # A name (a cluster node's), unless it is made of numbers: a mistyped address, not a name to look up.
        unresolved = host.replace(".", "").isdigit()
        try:
            unresolved = unresolved or not socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            unresolved = True
        if unresolved:
            raise UserError(
                f"KERASTUNER_ORACLE_IP={host!r}: not an IP address or a host name this machine can resolve (the chief's address)"
            ) from None
    return host, int(port)


def join_search(search_dir, overrides=None, *, timeout):
    """A worker of a distributed search: waits for the chief (its search folder, then its oracle
    answering), then trains the trials the chief's oracle hands out until it has no more.

    Args:
        overrides: settings that may differ on this machine (`RESUME_OVERRIDES`: where the data is, ...).
        timeout: seconds to wait for the chief to make the search folder, to answer, and to answer
            each request later (KerasTuner's own wait is an hour per request).

    Raises:
        UserError: the chief did not come, or stopped answering, within `timeout`.
    """
    # gRPC comes with the cluster extra (or TensorFlow), which a distributed search needs anyway.
    import grpc
    from keras_tuner.src.distribute import oracle_client

    host, port = oracle_address()
    print(
        f"Worker {os.environ['KERASTUNER_TUNER_ID']}: waiting for the chief at {host}:{port} and its {Path(search_dir) / SEARCH_FILENAME} (at most {timeout} s: --chief-timeout)"
    )
    search_file = Path(search_dir) / SEARCH_FILENAME
    deadline = time.monotonic() + timeout
    while not search_file.is_file():
        if time.monotonic() >= deadline:
            raise UserError(
                f"{search_dir}: no {SEARCH_FILENAME} after {timeout} s; is the chief (KERASTUNER_TUNER_ID=chief) running with the same --search-dir?"
            )
        time.sleep(1)
    try:
        grpc.channel_ready_future(grpc.insecure_channel(f"{host}:{port}")).result(
            timeout=max(deadline - time.monotonic(), 1)
        )
    except grpc.FutureTimeoutError:
        raise UserError(
            f"no chief answered at {host}:{port} within {timeout} s; is it running (KERASTUNER_TUNER_ID=chief) with the same KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT?"
        ) from None
    oracle_client.TIMEOUT = timeout  # read by each request of KerasTuner's client
    try:
        return continue_search(search_dir, overrides)
    except grpc.RpcError as error:
        if error.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            raise
        raise UserError(
            f"the chief at {host}:{port} stopped answering (nothing for {timeout} s); the search folder keeps the finished "
            "trials: start the chief again, then the workers"
        ) from None


def start_search(trial_config, final_config, trials, tuner="bayesian", search_dir=None):
    """A new search; returns its folder once `trials` trials have run.

    Args:
        trial_config: the config each trial starts from (the search's epochs, image size, limit).
        final_config: the config `best.yaml` applies the best values to (the real run's epochs).
        trials: how many trials to run.
        tuner: "bayesian" or "hyperband" (its largest budget: `trial_config.epochs`).
        search_dir: the folder to make it in (a distributed search's, which its workers know),
            or None for a new `<output_dir>/tuning/<stamp>-<model>`.
    """
    if tuner not in TUNERS:
        raise UserError(f"unknown tuner {tuner!r} (expected {', '.join(TUNERS)})")
    if trials < 1:
        raise UserError(f"--trials must be at least 1; got {trials}")
    if search_dir is None:
        search_dir = new_stamped_folder(Path(trial_config.output_dir) / "tuning", trial_config.run_name)
    else:
        search_dir = Path(search_dir)
        if search_dir.exists() and any(search_dir.iterdir()):
            raise UserError(
                f"{search_dir}: a folder with other files in it, not a search folder (pass a new or empty --search-dir)"
            )
        search_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        search_dir / SEARCH_FILENAME,
        {
            "tuner": tuner,
            "trials": trials,
            "objective": OBJECTIVE,
            "trial_config": trial_config.to_dict(),
            "final_config": final_config.to_dict(),
            "results": {},
        },
    )
    print(f"Search folder: {search_dir} (continue it with `python main.py tune --resume {search_dir}` if it stops)")
    return continue_search(search_dir)


def continue_search(search_dir, overrides=None, trials=None):
    """Runs the trials a search has not finished yet, then writes `best.yaml`; returns the folder.

    Args:
        search_dir: the search folder.
        overrides: settings that may change (`RESUME_OVERRIDES`: where the data is, ...).
        trials: a new total number of trials (more extends the search), or None to keep it.
    """
    search_dir = Path(search_dir)
    search_file = search_dir / SEARCH_FILENAME
    try:
        search = json.loads(search_file.read_text(encoding="utf-8"))
        trial_config = TrainConfig.from_dict({**search["trial_config"], **(overrides or {})}, search_file)
        final_config = TrainConfig.from_dict(search["final_config"], search_file)
    except FileNotFoundError:
        raise DataError(f"{search_dir}: not a search folder (no {SEARCH_FILENAME})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{search_file}: damaged or not a search file ({error})") from None
    if trials is not None and trials != search["trials"]:
        if trials < len(search["results"]):
            raise UserError(f"--trials {trials}: the search has already finished {len(search['results'])} trials")
        search["trials"] = trials
        write_json(search_file, search)
    if trial_config.tracking and not os.environ.get("MLFLOW_TRACKING_URI"):
        # The trials' run folders live in the search folder; their MLflow runs go beside the others.
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri(search_dir.parent.parent)
    trial_config = dataclasses.replace(trial_config, output_dir=str(search_dir))
    oracle = _oracle(search, trial_config)
    tuner = RunTuner(oracle, search_dir, trial_config, search)
    role = distributed_role()
    if role == "chief":
        host, port = oracle_address()
        print(f"Chief: serving the search's oracle at {host}:{port} to its workers")
    if role == "worker" or len(search["results"]) < search["trials"]:
        # KerasTuner would first re-run a trial that was interrupted, even past the number asked for.
        # A chief serves the oracle to the workers until they have run every trial.
        tuner.search(verbose=0)
    if role == "worker":
        return search_dir
    best = tuner.oracle.get_best_trials(1)
    if not best or best[0].score is None:
        raise UserError(f"{search_dir}: no trial finished, so there is no best setting (see the errors above)")
    best_config = apply_values(final_config, best[0].hyperparameters.values)
    best_config.epochs = final_config.epochs
    best_config.save(search_dir / BEST_FILENAME)
    with file_lock(search_dir / SEARCH_LOCK):
        search = json.loads(search_file.read_text(encoding="utf-8"))
        write_json(search_file, {**search, "best": {"trial": best[0].trial_id, OBJECTIVE: best[0].score}})
    print(
        f"Best of {len(tuner.oracle.trials)} trials: trial {best[0].trial_id}, validation balanced accuracy "
        f"{best[0].score:.4f}; its settings: {search_dir / BEST_FILENAME} "
        f"(train it: python main.py --model {final_config.model} --config {search_dir / BEST_FILENAME})"
    )
    return search_dir


def _oracle(search, trial_config):
    """KerasTuner's oracle of the search (`tuning.json`'s tuner and trials), over `search_space`."""
    objective = keras_tuner.Objective(OBJECTIVE, direction="max")
    space = search_space(trial_config)
    # KerasTuner takes a seed of 0 for none (a random one): shifted by one, the seed fixes the proposals.
    seed = trial_config.seed + 1 if trial_config.seed < MAX_SEED else MAX_SEED
    common = dict(
        objective=objective, seed=seed, hyperparameters=space, allow_new_entries=False, tune_new_entries=False
    )
    if search["tuner"] == "hyperband":
        oracle = keras_tuner.oracles.HyperbandOracle(max_epochs=trial_config.epochs, factor=3, **common)
        oracle.max_trials = search["trials"]
    else:
        # KerasTuner's default is 3 random trials per hyper-parameter (21 here): a CPU-sized search
        # would never leave random search. A third of the trials, at least 2, start the model.
        initial = max(2, search["trials"] // 3)
        oracle = keras_tuner.oracles.BayesianOptimizationOracle(
            max_trials=search["trials"], num_initial_points=initial, **common
        )
    return oracle


class RunTuner(keras_tuner.engine.base_tuner.BaseTuner):
    """A KerasTuner tuner whose trial is a run of the project's trainer (`train_run`).

    Args:
        oracle: KerasTuner's oracle, with the search space.
        search_dir: the search folder (KerasTuner's project goes into its keras_tuner/).
        trial_config: the config each trial's values are applied to; its output_dir is the search folder.
        search: the contents of `tuning.json`.
    """

    def __init__(self, oracle, search_dir, trial_config, search):
        # overwrite=False: an existing project is reloaded, its finished trials kept.
        super().__init__(oracle, directory=str(search_dir), project_name="keras_tuner", overwrite=False)
        self.search_dir = Path(search_dir)
        self.trial_config = trial_config
        self.total = search["trials"]
        self.data = None

    def run_trial(self, trial, *args, **kwargs):
        if self.data is None:
            # Every trial trains on the same split and images: prepared once.
            self.data = prepare_run_data(self.trial_config)
        values = trial.hyperparameters.values
        config = apply_values(self.trial_config, values)
        shown = ", ".join(f"{name} {_format(value)}" for name, value in values.items() if not name.startswith("tuner/"))
        print(f"\nTrial {trial.trial_id} ({len(self._results()) + 1} of {self.total}): {shown}")
        started = self._read()["started"].get(trial.trial_id, {})
        if started.get("values") == values:
            # The trial was stopped part-way: its run folder continues from its last completed epoch.
            run = resume_run(started["run_dir"], {key: getattr(config, key) for key in RESUME_OVERRIDES}, verbose=0)
        else:

            def start(run_dir):
                self._update("started", trial.trial_id, {"values": values, "run_dir": str(run_dir)})

            run = train_run(config, data=self.data, verbose=0, study=self.search_dir.name, on_start=start)
        summary = json.loads((run.run_dir / TRAINING_FILENAME).read_text(encoding="utf-8"))
        log_finished_run(run.run_dir, config, study=self.search_dir.name)
        score = summary["best_val_balanced_accuracy"]
        results = self._record(trial.trial_id, values, score, summary["best_epoch"], run.run_dir)
        best = max(result[OBJECTIVE] for result in results.values())
        print(
            f"Trial {trial.trial_id}: validation balanced accuracy {score:.4f} (epoch {summary['best_epoch']}); best so far {best:.4f}"
        )
        # A fresh graph per trial: the models of earlier trials are not kept in memory.
        keras.backend.clear_session()
        return {OBJECTIVE: score}

    def _results(self):
        return json.loads((self.search_dir / SEARCH_FILENAME).read_text(encoding="utf-8"))["results"]

    def _record(self, trial_id, values, score, epoch, run_dir):
        """Adds a finished trial to tuning.json; returns every finished trial's result."""
        entry = {
            "values": values,
            OBJECTIVE: score,
            "best_epoch": epoch,
            "run_dir": str(run_dir),
            "tuner": self.tuner_id,
        }
        return self._update("results", trial_id, entry)["results"]

    def _read(self):
        """`tuning.json`, with "started" (the trials' run folders from the moment they start) in a search from before it."""
        return {"started": {}, **json.loads((self.search_dir / SEARCH_FILENAME).read_text(encoding="utf-8"))}

    def _update(self, section, trial_id, entry):
        """Sets one entry of tuning.json, which the other workers of a distributed search update too."""
        with file_lock(self.search_dir / SEARCH_LOCK):
            search = self._read()
            search[section][trial_id] = entry
            write_json(self.search_dir / SEARCH_FILENAME, search)
        return search


def _format(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)
