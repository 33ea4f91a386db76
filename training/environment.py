"""The run's `environment.json`: what reproducing its numbers needs besides the code and the config."""

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import keras

from common.files import write_json
from common.run_folder import ENVIRONMENT_FILENAME
from training.devices import compute_device, cpu_name
from training.distribution import describe_devices

REPO_ROOT = Path(__file__).resolve().parent.parent
RECORDED_PACKAGES = (
    "keras",
    "tensorflow",
    "jax",
    "jaxlib",
    "torch",
    "numpy",
    "pandas",
    "scikit-learn",
    "imbalanced-learn",
    "matplotlib",
    "seaborn",
    "pillow",
    "pyyaml",
)


def environment():
    """Package versions, backend, devices, machine and git commit: what reproducing a run needs."""
    packages = {}
    for name in RECORDED_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "backend": keras.backend.backend(),
        "device": compute_device(),
        # The devices the run trains on (several under `devices`, training.distribution).
        "devices": describe_devices(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # The host's CPU even when a GPU computes: the input pipeline and XLA compile on it.
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        # TensorFlow's oneDNN kernels change speed and the last bits of the numbers.
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "packages": packages,
        "git": git_state(),
    }


def write_environment(run_dir):
    write_json(Path(run_dir) / ENVIRONMENT_FILENAME, environment())


def git_state():
    """The commit the code ran from, and whether tracked files had uncommitted changes."""

    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
