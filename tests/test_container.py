"""The container image (Dockerfile, docs/container.md), built and run: it trains a toy run on the
mounted HAM10000 copy, serves it and predicts with it, and the run folder it leaves on the host
evaluates there the same.

Marked `container`, which the default `pytest` deselects: it builds a 1.5 GB image (minutes). CI
runs it through .ci/container, after the other tests:

    CONTAINER_BASE=localhost/pybase pytest -m container -n 0

Environment: CONTAINER_ENGINE (default podman if installed, else docker), CONTAINER_BASE (the
Dockerfile's BASE build argument; default its own, python:3.11-slim), CONTAINER_BUILD_FLAGS (more
`build` flags, such as a CA bundle mounted for pip).
"""

import io
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO_ROOT, run_main

from common.run_folder import PREDICTIONS_FILENAME
from dataset import locate_images
from dataset.metadata import CLASS_NAMES

pytestmark = [pytest.mark.container, pytest.mark.xdist_group("container")]

ENGINE = os.environ.get("CONTAINER_ENGINE") or ("podman" if shutil.which("podman") else "docker")
IMAGE = "localhost/ham10000-study:test"
# The user the Dockerfile creates; any other works too (docs/container.md), which predict checks.
IMAGE_USER = "app"
OTHER_UID = "4321:4321"
TRAIN = ["--model", "densenet", "--config", "configs/tiny.yaml", "--limit", "200"]
# 1.52 GB as built: a bound that catches the full TensorFlow (0.6 GB more) or build tools coming back.
MAX_IMAGE_BYTES = 1.7e9


def engine(*arguments, timeout=600, check=True):
    """Runs the container engine; on failure, the assertion shows the end of its output."""
    result = subprocess.run([ENGINE, *arguments], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, (
            f"{ENGINE} {shlex.join(arguments)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@pytest.fixture(scope="module")
def image():
    if shutil.which(ENGINE) is None:
        pytest.fail(
            f"no container engine {ENGINE!r}: install podman (Debian's package; .ci/container shows the setup) or docker"
        )
    flags = ["--tag", IMAGE, *shlex.split(os.environ.get("CONTAINER_BUILD_FLAGS", ""))]
    if os.environ.get("CONTAINER_BASE"):
        flags += ["--build-arg", f"BASE={os.environ['CONTAINER_BASE']}"]
    if ENGINE == "podman":
        flags += ["--format", "docker"]  # the OCI format podman defaults to has no HEALTHCHECK
    # The image stays after the tests, to be tried by hand; the next run replaces it, never stacks them.
    engine("rmi", "--force", IMAGE, check=False)
    engine("build", *flags, str(REPO_ROOT), timeout=1500)
    return IMAGE


@pytest.fixture(scope="module")
def results(image, ham_dir, tmp_path_factory):
    """The host folder the container's toy training wrote its run into (mounted at /app/results).

    The container runs as the image's own user, so the folder is made writable by anyone; while it
    trains, the image's HEALTHCHECK must call it healthy (only `serve` has an endpoint to ask).
    """
    folder = tmp_path_factory.mktemp("container_results")
    folder.chmod(0o777)
    name = f"ham10000-train-{uuid.uuid4().hex[:8]}"
    engine(
        "run",
        "--detach",
        "--name",
        name,
        "--volume",
        f"{ham_dir.resolve()}:/data:ro",
        "--volume",
        f"{folder}:/app/results",
        image,
        *TRAIN,
    )
    try:
        health = engine("exec", name, "python", "container/healthcheck.py", check=False)
        status = engine("wait", name, timeout=900).stdout.strip()
        log = engine("logs", name)
        assert status == "0", f"training in the container exited {status}:\n{log.stdout[-3000:]}\n{log.stderr[-3000:]}"
        assert health.returncode == 0, health.stdout + health.stderr
    finally:
        engine("rm", "--force", name, check=False)
    return folder


@pytest.fixture(scope="module")
def run_dir(results):
    runs = list((results / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_image_is_small_runs_as_a_user_without_root_and_checks_its_health(image):
    config = json.loads(engine("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert config["User"] == IMAGE_USER
    assert config["Entrypoint"] == ["python", "main.py"]
    # Asked for on its own: podman's JSON of the whole .Config leaves it out.
    healthcheck = json.loads(engine("image", "inspect", "--format", "{{json .Config.Healthcheck}}", image).stdout)
    assert healthcheck["Test"] == ["CMD", "python", "container/healthcheck.py"]
    assert "HAM10000_DIR=/data" in config["Env"]
    size = int(engine("image", "inspect", "--format", "{{.Size}}", image).stdout)
    assert size < MAX_IMAGE_BYTES, f"the image is {size / 1e9:.2f} GB"
    # Runtime packages only: the serve extra, TensorFlow without CUDA, no test, tuning or build tools.
    probe = (
        "import importlib.util as u, shutil; "
        "print(json.dumps({m: u.find_spec(m) is not None for m in ('fastapi', 'uvicorn', 'tensorflow', 'tensorboard', "
        "'pytest', 'keras_tuner', 'mlflow', 'jax', 'pip')} | {'gcc': bool(shutil.which('gcc')), 'strip': bool(shutil.which('strip'))}))"
    )
    found = json.loads(engine("run", "--rm", "--entrypoint", "python", image, "-c", f"import json; {probe}").stdout)
    assert found == {
        "fastapi": True,
        "uvicorn": True,
        "tensorflow": True,
        "tensorboard": True,
        "pytest": False,
        "keras_tuner": False,
        "mlflow": False,
        "jax": False,
        "pip": False,
        "gcc": False,
        "strip": False,
    }


def test_run_trained_in_the_container_is_readable_on_the_host_and_evaluates_the_same(run_dir):
    expected = {
        "config.yaml",
        "split.csv",
        "model.keras",
        "history.csv",
        PREDICTIONS_FILENAME,
        "metrics.json",
        "report.md",
    }
    assert expected <= {path.name for path in run_dir.iterdir()}
    for path in run_dir.rglob("*"):
        # Written by the image's user, not root, and readable by every user of the host.
        assert path.stat().st_uid != 0, path
        assert path.stat().st_mode & stat.S_IROTH, path
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["n_images"] > 0
    # Evaluated again on the host, from the run's predictions.csv: the same metrics, written anew.
    (run_dir / "metrics.json").unlink()
    assert run_main("evaluate", run_dir) == 0
    assert json.loads((run_dir / "metrics.json").read_text()) == written


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_health(url, name, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            state = engine("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            assert state == "true", f"the serving container stopped:\n{engine('logs', name).stderr[-3000:]}"
            time.sleep(1)
    pytest.fail(f"{url}/health did not answer within {timeout} s")


def test_served_in_the_container_answers_health_and_predicts_a_real_image_as_the_run_did(
    image, results, run_dir, ham_dir
):
    """`serve` as docs/container.md runs it: port 8000 published, listening on 0.0.0.0, the results read-only."""
    predictions = pd.read_csv(run_dir / PREDICTIONS_FILENAME)
    row = predictions.iloc[0]
    photo = locate_images([row["image_id"]], ham_dir)[row["image_id"]]
    port, name = free_port(), f"ham10000-serve-{uuid.uuid4().hex[:8]}"
    engine(
        "run",
        "--detach",
        "--name",
        name,
        "--publish",
        f"127.0.0.1:{port}:8000",
        "--volume",
        f"{results}:/app/results:ro",
        image,
        "serve",
        f"results/runs/{run_dir.name}",
        "--host",
        "0.0.0.0",
    )
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for_health(url, name) == {"status": "ok"}
        engine("exec", name, "python", "container/healthcheck.py")  # the image's HEALTHCHECK, once
        curl = subprocess.run(
            ["curl", "--silent", "--show-error", "--fail", "-F", f"image=@{photo}", f"{url}/predict"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        answer = json.loads(curl.stdout)
        engine("stop", name, timeout=60)
        state = json.loads(engine("inspect", "--format", "{{json .State}}", name).stdout)
    finally:
        engine("rm", "--force", name, check=False)
    assert not state["Running"] and state["ExitCode"] == 0  # stopped by SIGTERM, gracefully
    # The same image, decoded and resized as in training, gets the probabilities the run wrote for it.
    assert answer["probabilities"] == pytest.approx({code: row[f"prob_{code}"] for code in CLASS_NAMES}, abs=1e-6)
    assert answer["predicted"]["code"] == row["pred"]


def test_predict_in_the_container_as_another_user_gives_what_the_run_wrote(image, results, run_dir, ham_dir):
    """`--user` of any id works too (docs/container.md): the image's home is writable by anyone."""
    predictions = pd.read_csv(run_dir / PREDICTIONS_FILENAME)
    photos = locate_images(list(predictions["image_id"][:3]), ham_dir)
    output = engine(
        "run",
        "--rm",
        "--user",
        OTHER_UID,
        "--volume",
        f"{results}:/app/results:ro",
        "--volume",
        f"{ham_dir.resolve()}:/data:ro",
        image,
        "predict",
        f"results/runs/{run_dir.name}",
        *(f"/data/{path.relative_to(ham_dir)}" for path in photos.values()),
    ).stdout
    # Printed with 4 decimals.
    predicted = pd.read_csv(io.StringIO(output))
    assert [Path(name).stem for name in predicted["image"]] == list(photos)
    for code in CLASS_NAMES:
        assert predicted[f"prob_{code}"].to_numpy() == pytest.approx(
            predictions[f"prob_{code}"][:3].to_numpy(), abs=1e-4
        )
