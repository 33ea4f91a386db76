"""The GPU check: what this project does on one GPU under JAX, in at most 8 minutes, in one JSON.

    KERAS_BACKEND=jax python benchmarks/gpu_check.py --output gpu_check.json
    KERAS_BACKEND=jax python benchmarks/gpu_check.py --toy --output toy.json    # its rehearsal on a CPU, in a minute or two

`benchmarks/gpu_check.sh` runs it on a machine without this project's packages (no TensorFlow,
Keras or imbalanced-learn), from wheels carried beside the checkout. In order:

1. the machine: backend, device, packages;
2. the image cache at 224 px, built from the images;
3. the throughput benchmark's (b) compute and (c) fit images per second, batch 64, for the
   pretrained model's network (vgg16; the machine cannot download ImageNet's weights, and
   weights do not change the speed) and the from-scratch ones (densenet, cnn);
4. the GPU preset's main configuration, `--model densenet --config configs/gpu.yaml`, trained for
   a few epochs and evaluated on the test subset, as `python main.py` does it.

The JSON is written after every step, so a check stopped at its time limit keeps what it
measured; a step that fails is recorded with its error and the next one runs; a step that the
time left cannot hold is skipped, saying so. `--toy` runs every step at toy size (32 px, 200
images, narrow networks) to show on a CPU that nothing is missing before a GPU is spent on it.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")  # the check is JAX's: the GPU machines have no TensorFlow
import keras  # noqa: E402
import throughput  # noqa: E402  (benchmarks/throughput.py: sets up the environment as main.py does)

import main  # noqa: E402
from common.files import write_json  # noqa: E402
from common.run_folder import METRICS_FILENAME, TRAINING_FILENAME, read_history  # noqa: E402
from dataset import find_data_dir, prepare_data  # noqa: E402
from evaluation.catalogue import GPU_CHECK, keys_shown  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
GPU_PRESET = REPO_ROOT / "configs" / "gpu.yaml"
MAIN_MODEL = "densenet"
THROUGHPUT_MODELS = ("vgg16", "densenet", "cnn")  # the pretrained network, then the two from scratch
PACKAGES = ("keras", "jax", "jaxlib", "numpy", "scikit-learn", "imbalanced-learn", "pandas", "pillow")
# The full size, and the rehearsal's toy size.
SIZES = {
    "gpu": {"image_size": 224, "batch_size": 64, "steps": 10, "repeats": 3, "epochs": 3, "networks": None},
    "toy": {
        "image_size": 32,
        "batch_size": 8,
        "steps": 1,
        "repeats": 1,
        "epochs": 2,
        "networks": REPO_ROOT / "configs" / "tiny.yaml",
    },
}
# The toy training: the GPU preset's file, with the tiny preset's size, sampling and densenet.
TOY_TRAINING = [
    "--set",
    "balance_target=10",
    "--set",
    "model_options={block_sizes: [2, 2, 2, 2], growth_rate: 8, stem_filters: 16}",
]
# Seconds kept for the training and evaluation when deciding whether to start another throughput
# model, and the least they are started with.
TRAINING_RESERVE_S = 200
MINIMUM_TRAINING_S = 90


def main_():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="the JSON to write")
    parser.add_argument("--data-dir", help="HAM10000 folder (default: as main.py finds it)")
    parser.add_argument(
        "--budget",
        type=float,
        default=420,
        help="seconds this script may take (default: %(default)s; the install and start-up take the rest of 8 minutes)",
    )
    parser.add_argument(
        "--toy",
        action="store_true",
        help="every step at toy size, to rehearse the check on a CPU (the tiny preset's networks at 32 px)",
    )
    arguments = parser.parse_args()
    check = Check(arguments.output, arguments.budget, "toy" if arguments.toy else "gpu", arguments.data_dir)
    check.step("machine", check.machine)
    check.step("cache", check.cache)
    for name in THROUGHPUT_MODELS:
        if check.seconds_left() < TRAINING_RESERVE_S and not arguments.toy:
            check.skip(f"throughput {name}", f"{check.seconds_left():.0f} s left, kept for the training")
            continue
        check.step(f"throughput {name}", lambda name=name: check.throughput(name))
    if check.seconds_left() < MINIMUM_TRAINING_S and not arguments.toy:
        check.skip("training and evaluation", f"{check.seconds_left():.0f} s left")
    else:
        check.step("training and evaluation", check.train_and_evaluate)
    print(json.dumps(check.results["summary"], indent=1))


class Check:
    def __init__(self, output, budget, size, data_dir):
        self.output = output
        self.deadline = time.monotonic() + budget
        self.size = SIZES[size]
        self.toy = size == "toy"
        self.data_dir = str(find_data_dir(data_dir))
        self.data = None
        self.started = time.monotonic()
        self.results = {
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "size": size,
            **{key: str(value) if isinstance(value, Path) else value for key, value in self.size.items()},
            "steps": {},
            "summary": {},
        }

    def seconds_left(self):
        return self.deadline - time.monotonic()

    def step(self, name, function):
        started = time.monotonic()
        print(f"\n=== {name} ({self.seconds_left():.0f} s left)", flush=True)
        # What a check stopped at its time limit was doing.
        self.results["steps"][name] = {"unfinished": f"started with {self.seconds_left():.0f} s left"}
        self.save()
        try:
            self.results["steps"][name] = {"result": function(), "seconds": round(time.monotonic() - started, 1)}
        except Exception as error:  # one failed step must not cost the others: the device time is spent either way
            traceback.print_exc()
            self.results["steps"][name] = {
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc()[-2000:],
                "seconds": round(time.monotonic() - started, 1),
            }
        self.save()

    def skip(self, name, reason):
        print(f"\n=== {name}: skipped, {reason}", flush=True)
        self.results["steps"][name] = {"skipped": reason}
        self.save()

    def save(self):
        self.results["seconds"] = round(time.monotonic() - self.started, 1)
        write_json(self.output, self.results)

    def machine(self):
        packages = {}
        for name in PACKAGES:
            try:
                packages[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                packages[name] = None
        machine = {**throughput.machine(), "packages": packages, "python": sys.version.split()[0]}
        if machine["backend"] != "jax":
            raise RuntimeError(f"the check is for JAX (KERAS_BACKEND=jax); this is {machine['backend']}")
        self.results["summary"]["device"] = machine["device"]
        return machine

    def cache(self):
        """Builds (or finds) the image cache at the check's size, as every later step reads it."""
        started = time.monotonic()
        self.data = prepare_data(self.data_dir, image_size=self.size["image_size"], verbose=False)
        return {
            "images": len(self.data.split),
            "cache_mb": round(self.data.cache.path.stat().st_size / 2**20),
            "seconds": round(time.monotonic() - started, 1),
        }

    def throughput(self, name):
        size = self.size
        row = throughput.measure(
            name,
            size["image_size"],
            self.data,
            size["batch_size"],
            size["steps"],
            size["repeats"],
            config_file=size["networks"],
        )
        self.results["summary"][f"{name} img/s (b) compute, (c) fit"] = [
            row["compute_images_per_s"],
            row["fit_images_per_s"],
        ]
        keras.backend.clear_session()
        return row

    def train_and_evaluate(self):
        """`python main.py --model densenet --config configs/gpu.yaml --epochs N`, in this process."""
        output = Path(tempfile.mkdtemp(prefix="gpu_check-"))  # gpu_check.sh returns its run's files, even if stopped
        arguments = [
            "--model",
            MAIN_MODEL,
            "--config",
            str(GPU_PRESET),
            "--epochs",
            str(self.size["epochs"]),
            "--data-dir",
            self.data_dir,
            "--output-dir",
            str(output),
        ]
        if self.toy:
            arguments += [
                "--set",
                f"image_size={self.size['image_size']}",
                "--set",
                f"batch_size={self.size['batch_size']}",
                *TOY_TRAINING,
            ]
        started = time.monotonic()
        status = main.main(arguments)
        seconds = time.monotonic() - started
        if status != 0:
            raise RuntimeError(f"main.py {' '.join(arguments)} exited with {status}")
        (run_dir,) = (output / "runs").iterdir()
        training = json.loads((run_dir / TRAINING_FILENAME).read_text())
        metrics = json.loads((run_dir / METRICS_FILENAME).read_text())
        history = read_history(run_dir)
        result = {
            "command": f"python main.py {' '.join(arguments)}",
            "run": run_dir.name,
            "seconds": round(seconds, 1),
            "training_s": training["wall_time_s"],
            # What main.py does after training: predicting the test subset, the Grad-CAM gallery, metrics, plots, report.
            "evaluation_s": round(seconds - training["wall_time_s"], 1),
            "epoch_s": history["seconds"].round(1).tolist(),
            "history": history[["epoch", "loss", "val_loss", "val_balanced_accuracy"]].round(4).to_dict("records"),
            "training": {
                key: training[key]
                for key in (
                    "precision",
                    "jit_compile",
                    "parameters",
                    "train_images_per_epoch",
                    "best_epoch",
                    "best_val_balanced_accuracy",
                )
            },
            "test": {key: metrics[key] for key in keys_shown(GPU_CHECK)},
            "environment": json.loads((run_dir / "environment.json").read_text())["devices"],
        }
        self.results["summary"]["training"] = {key: result[key] for key in ("epoch_s", "evaluation_s", "test")}
        return result


if __name__ == "__main__":
    main_()
