"""One run on several devices (training.distribution) and JAX's persistent compilation cache
(training.compilation), on a CPU that XLA splits into two devices.

XLA reads `--xla_force_host_platform_device_count` once, when JAX starts, so the runs happen in a
process of their own: run as a script, this file is that process.
    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax python tests/test_distribution.py TOY_DIR OUTPUT
It trains the toy cnn (`configs/tiny.yaml`, 2 epochs) on one device, on two, and on two again
stopped after its first epoch and resumed; stops one more after its first epoch, which two
processes then resume as two hosts would; and asks for a batch the two devices cannot share.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # when run as a script

from conftest import REPO_ROOT, TINY_CONFIG, run_main  # noqa: E402

from common.run_folder import TIMING_COLUMNS  # noqa: E402
from training import load_config  # noqa: E402
from training.config import ConfigError  # noqa: E402
from training.distribution import resolve_devices  # noqa: E402

jax = pytest.importorskip("jax", reason="data parallelism is JAX's: pip install -e '.[jax]'")
# Under pytest-xdist, one worker runs them all, so that their runs are trained once.
pytestmark = pytest.mark.xdist_group("distribution")

# The two devices sum the gradients of their halves of each batch, where one device sums them
# over the whole batch: the same numbers, added in another order (float32 rounding).
LOSS_TOLERANCE = 1e-5  # relative
RUNS = ("one-device", "two-devices", "two-devices-resumed", "to-resume-on-two-hosts")


@pytest.fixture(scope="module")
def runs(toy_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("distribution")
    environment = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        # JAX caches only compilations of at least 1 s by default: under a varying load a step can
        # fall either side, so here every compilation is cached.
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    completed = subprocess.run(
        [sys.executable, __file__, str(toy_dir), str(output)],
        env=environment,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    folders = {name: next((output / name / "runs").iterdir()) for name in RUNS}
    return folders, output, completed.stdout


def test_two_devices_train_to_the_one_device_loss(runs):
    folders, _, _ = runs
    one, two = (pd.read_csv(folders[name] / "history.csv") for name in ("one-device", "two-devices"))
    assert two.loc[0, "loss"] == pytest.approx(one.loc[0, "loss"], rel=LOSS_TOLERANCE)
    assert two.loc[0, "val_loss"] == pytest.approx(one.loc[0, "val_loss"], rel=LOSS_TOLERANCE)
    environment = json.loads((folders["two-devices"] / "environment.json").read_text())
    assert environment["devices"] == {"count": 2, "processes": 1, "names": ["cpu:0", "cpu:1"], "kind": "cpu"}
    assert json.loads((folders["one-device"] / "environment.json").read_text())["devices"] == {
        "count": 1,
        "processes": 1,
    }


def test_a_two_device_run_resumes_exactly_and_is_evaluated(runs):
    folders, _, printed = runs
    whole, resumed = folders["two-devices"], folders["two-devices-resumed"]
    assert f"Resuming {resumed.name} after epoch 1" in printed
    for name in ("history.csv", "predictions.csv"):
        expected, actual = pd.read_csv(whole / name), pd.read_csv(resumed / name)
        if name == "history.csv":
            expected, actual = expected.drop(columns=list(TIMING_COLUMNS)), actual.drop(columns=list(TIMING_COLUMNS))
        pd.testing.assert_frame_equal(actual, expected, check_exact=True)
    for name in ("one-device", "two-devices", "two-devices-resumed"):
        assert (folders[name] / "metrics.json").is_file() and (folders[name] / "report.md").is_file()


@pytest.fixture(scope="module")
def resumed_on_two_hosts(runs):
    """The interrupted two-device run resumed by two processes, each with one device, as two
    hosts would (Keras's variables, on 127.0.0.1). Returns the run folder and what each printed."""
    folders, _, _ = runs
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = [
        subprocess.Popen(
            [sys.executable, "main.py", "--resume", str(folders["to-resume-on-two-hosts"])],
            cwd=REPO_ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "KERAS_BACKEND": "jax",
                "TF_CPP_MIN_LOG_LEVEL": "3",
                "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}",
                "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
                "KERAS_DISTRIBUTION_PROCESS_ID": str(process),
            },
        )
        for process in range(2)
    ]
    printed = [process.communicate(timeout=900)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], printed[0][-3000:] + printed[1][-3000:]
    return folders["to-resume-on-two-hosts"], printed


def test_a_run_resumed_on_two_hosts_is_the_two_device_run(runs, resumed_on_two_hosts):
    folders, _, _ = runs
    run_dir, printed = resumed_on_two_hosts
    assert all(f"Resuming {run_dir.name} after epoch 1" in output for output in printed)
    for name in ("history.csv", "predictions.csv"):
        expected, actual = pd.read_csv(folders["two-devices"] / name), pd.read_csv(run_dir / name)
        if name == "history.csv":
            expected, actual = expected.drop(columns=list(TIMING_COLUMNS)), actual.drop(columns=list(TIMING_COLUMNS))
        pd.testing.assert_frame_equal(actual, expected, check_exact=True)
    # Process 1 wrote its copy of the run in a folder of its own, not beside process 0's.
    assert len(list(run_dir.parent.iterdir())) == 1 and not (run_dir / "run.lock").exists()
    assert (run_dir / "metrics.json").is_file() and "process-1-" in printed[1]


def test_compiled_steps_are_cached_and_reused(runs):
    _, output, printed = runs
    cached = json.loads((output / "cache-entries.json").read_text())
    # The first two-device run compiled its training step into the cache; the same run again,
    # resumed, found every step there and compiled nothing new.
    assert any(name.startswith("jit_train_step") for name in cached["after two devices"])
    assert cached["after the resumed run"] == cached["after two devices"]


def test_a_batch_the_devices_cannot_share_is_refused(runs):
    *_, printed = runs
    assert "error: batch_size 7 cannot be split evenly over 2 devices" in printed


def test_several_devices_need_jax_and_existing_devices():
    if keras.backend.backend() != "jax":
        with pytest.raises(ConfigError, match="devices: 2 needs KERAS_BACKEND=jax"):
            resolve_devices(2)
        assert resolve_devices("auto") == []
    with pytest.raises(ConfigError, match="devices must be auto or a number"):
        load_config("cnn", TINY_CONFIG, {"devices": 0})


def train_every_run(toy_dir, output):
    """The runs the tests read, each in `output/<name>/`; prints what main.py printed."""
    from test_reliability import interrupt_after

    cache = Path(os.environ["HAM10000_CACHE"]) / "jax-compilation"
    entries = {}
    arguments = ["--model", "cnn", "--config", TINY_CONFIG, "--epochs", 2, "--data-dir", toy_dir]
    assert run_main(*arguments, "--set", "devices=1", "--output-dir", output / "one-device") == 0
    assert run_main(*arguments, "--set", "devices=2", "--output-dir", output / "two-devices") == 0
    entries["after two devices"] = sorted(path.name for path in cache.iterdir())
    with pytest.MonkeyPatch.context() as patch:
        interrupt_after(patch, 1)
        assert run_main(*arguments, "--set", "devices=2", "--output-dir", output / "two-devices-resumed") == 130
    (interrupted,) = (output / "two-devices-resumed" / "runs").iterdir()
    assert run_main("--resume", interrupted) == 0
    entries["after the resumed run"] = sorted(path.name for path in cache.iterdir())
    (output / "cache-entries.json").write_text(json.dumps(entries))
    with pytest.MonkeyPatch.context() as patch:
        interrupt_after(patch, 1)
        assert run_main(*arguments, "--set", "devices=2", "--output-dir", output / "to-resume-on-two-hosts") == 130
    assert run_main(*arguments, "--set", "devices=2", "--set", "batch_size=7", "--output-dir", output / "refused") == 2


if __name__ == "__main__":
    sys.stderr = sys.stdout  # main.py's error lines, in the order they came
    train_every_run(Path(sys.argv[1]), Path(sys.argv[2]))


@pytest.mark.parametrize(
    ("processes", "message"),
    [
        ("two", "KERAS_DISTRIBUTION_NUM_PROCESSES='two': expected the number of processes (hosts) of the run"),
        ("2", None),
    ],
)
def test_a_run_over_several_hosts_needs_jax_and_a_number_of_processes(processes, message, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", processes)
    if message is None:
        if keras.backend.backend() == "jax":
            pytest.skip("under JAX the processes would try to join")
        message = "KERAS_DISTRIBUTION_NUM_PROCESSES=2: training over several hosts needs KERAS_BACKEND=jax"
    assert run_main("--model", "cnn", "--config", TINY_CONFIG) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
