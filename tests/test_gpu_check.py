"""The GPU check's rehearsal (benchmarks/gpu_check.py --toy): every step at toy size under JAX, in a
process that, like the GPU machines, cannot import TensorFlow, KerasTuner, MLflow, submitit or
FastAPI, so that the check cannot fail there for a missing package or file."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

pytest.importorskip("jax", reason="the GPU check runs under JAX: pip install -e '.[jax]'")

# What the GPU machines lack and the check does not carry (benchmarks/gpu_check.sh carries Keras and imbalanced-learn).
ABSENT = ("tensorflow", "keras_tuner", "mlflow", "submitit", "fastapi", "uvicorn")
WITHOUT_ABSENT_PACKAGES = f"""
import importlib.machinery, runpy, sys
class PathFinderWithout(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in {ABSENT!r} else super().find_spec(name, path, target)
sys.meta_path = [PathFinderWithout if finder is importlib.machinery.PathFinder else finder for finder in sys.meta_path]
sys.argv = sys.argv[1:]
sys.path.insert(0, "benchmarks")
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_the_gpu_check_rehearsed_at_toy_size_runs_every_step(toy_dir, tmp_path):
    output = tmp_path / "gpu_check.json"
    environment = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [
        sys.executable,
        "-c",
        WITHOUT_ABSENT_PACKAGES,
        "benchmarks/gpu_check.py",
        "--toy",
        "--data-dir",
        str(toy_dir),
        "--output",
        str(output),
    ]
    completed = subprocess.run(command, env=environment, cwd=REPO_ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "no TensorBoard logs: Keras writes them with TensorFlow, which is not installed" in completed.stdout

    check = json.loads(output.read_text())
    steps = check["steps"]
    assert list(steps) == [
        "machine",
        "cache",
        "throughput vgg16",
        "throughput densenet",
        "throughput cnn",
        "training and evaluation",
    ]
    assert all("result" in step for step in steps.values()), {name: step.get("error") for name, step in steps.items()}
    assert steps["machine"]["result"]["backend"] == "jax" and steps["machine"]["result"]["packages"]["keras"]
    for name in ("vgg16", "densenet", "cnn"):
        row = steps[f"throughput {name}"]["result"]
        assert row["image_size"] == 32 and row["compute_images_per_s"] > 0 and row["fit_images_per_s"] > 0
    training = steps["training and evaluation"]["result"]
    assert "--config" in training["command"] and "configs/gpu.yaml" in training["command"]
    assert len(training["epoch_s"]) == 2 and training["test"]["n_images"] > 0
    assert check["summary"]["training"]["test"] == training["test"]


def test_the_gpu_check_script_parses():
    subprocess.run(["bash", "-n", REPO_ROOT / "benchmarks" / "gpu_check.sh"], check=True)
