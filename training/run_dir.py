"""The run folder: where one training run leaves everything a reader needs to trust its numbers.

    <output_dir>/runs/<YYYYmmdd-HHMMSS>-<model>[-meta]/
        config.yaml  split.csv  environment.json  history.csv  training.json  model.keras
        metadata_encoder.json (hybrid head)  predictions.csv  metrics.json  *.png  report.md
        checkpoint/ (while training: the last epoch's model and state, for --resume)
        run.lock (while a process trains in the folder: its id and machine)
"""

import contextlib
import datetime
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import keras

from dataset.atomic import new_folder, process_alive, write_json
from dataset.errors import UserError
from training.devices import compute_device

LOCK_FILENAME = "run.lock"

REPO_ROOT = Path(__file__).resolve().parent.parent
RECORDED_PACKAGES = (
    "keras", "tensorflow", "jax", "jaxlib", "torch", "numpy", "pandas", "scikit-learn",
    "imbalanced-learn", "matplotlib", "seaborn", "pillow", "pyyaml",
)


def create_run_dir(output_dir, name, now=None):
    """Makes a new, empty run folder; never reuses an existing one.

    Two runs started in the same second get the suffixes "-2", "-3", ...
    """
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return new_folder(Path(output_dir) / "runs" / f"{stamp}-{name}")


@contextlib.contextmanager
def run_lock(run_dir):
    """Holds the run folder for this process: a second process training into it is refused.

    The lock file names the process and machine that hold it. A lock left by a process that has
    died on this machine (killed, out of memory) is stale and taken over.

    Raises:
        UserError: another live process, or a process on another machine, holds the folder.
    """
    path = Path(run_dir) / LOCK_FILENAME
    host = socket.gethostname()
    while True:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder_pid, _, holder_host = path.read_text().strip().partition(" ")
            # An empty lock is one whose writer died between creating and writing it.
            if not holder_pid.isdigit() or (holder_host == host and not process_alive(int(holder_pid))):
                path.unlink(missing_ok=True)
                continue
            raise UserError(
                f"{run_dir}: process {holder_pid} on {holder_host} is training this run; wait for it to end "
                f"(if that process is gone, delete {path})"
            ) from None
        with os.fdopen(descriptor, "w") as lock:
            lock.write(f"{os.getpid()} {host}\n")
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


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
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": packages,
        "git": git_state(),
    }


def write_environment(run_dir):
    write_json(Path(run_dir) / "environment.json", environment())


def git_state():
    """The commit the code ran from, and whether tracked files had uncommitted changes."""

    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
