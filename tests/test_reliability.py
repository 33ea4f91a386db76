"""Interruptions, concurrent use, undefined metrics and failures: nothing lost, nothing half-made,
resumed runs identical to uninterrupted ones, one-line errors for bad input and tracebacks for bugs."""

import errno
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, TINY_CONFIG, copy_toy_dir, run_main
from test_evaluation_reports import toy_predictions, write_run

import evaluation
from common.errors import DataError
from common.run_folder import LOCK_FILENAME, TIMING_COLUMNS, run_lock
from dataset import load_images, locate_images
from evaluation import Predictor, compare_runs
from training import ConfigError, load_config, resume_run, trainer
from training.compilation import use_compilation_cache
from training.config import parse_settings


def interrupt_after(patch, epochs_done):
    """Makes training stop as if killed once `epochs_done` epochs (counted over all runs) were checkpointed."""
    record_epoch = trainer.EpochRecorder.on_epoch_end
    count = []

    def record_then_interrupt(self, epoch, logs=None):
        record_epoch(self, epoch, logs)
        count.append(epoch)
        if len(count) == epochs_done:
            raise KeyboardInterrupt

    patch.setattr(trainer.EpochRecorder, "on_epoch_end", record_then_interrupt)
    return lambda: patch.setattr(trainer.EpochRecorder, "on_epoch_end", record_epoch)


def only_line(capsys):
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    return error


@pytest.fixture(scope="module")
def interrupted_run(toy_dir, tmp_path_factory):
    """A cnn run of 3 epochs stopped after its first: to be copied, never changed."""
    output = tmp_path_factory.mktemp("interrupted")
    with pytest.MonkeyPatch.context() as patch:
        interrupt_after(patch, 1)
        arguments = ["--model", "cnn", "--config", TINY_CONFIG, "--epochs", 3, "--data-dir", toy_dir]
        assert run_main(*arguments, "--output-dir", output) == 130
    (run_dir,) = (output / "runs").iterdir()
    return run_dir


@pytest.fixture
def damaged_run(interrupted_run, tmp_path):
    return shutil.copytree(interrupted_run, tmp_path / interrupted_run.name)


# === 1. A resumed run is the run it would have been ===


@pytest.mark.parametrize(
    "extra_settings", ["", "ema: 0.9", "mixup: 0.2\ncutmix: 1.0"], ids=["plain", "weight averaging", "mixup and cutmix"]
)
def test_resumed_run_is_identical_to_an_uninterrupted_one(toy_dir, tmp_path, monkeypatch, extra_settings):
    # The head's dropout, the resampling and the class weights all draw from the seed; with weight
    # averaging, the checkpoint holds the averaged weights in the model and the raw ones in the optimizer;
    # MixUp and CutMix draw from the sequence's (seed, epoch, batch) generator.
    config = tmp_path / "config.yaml"
    config.write_text(TINY_CONFIG.read_text() + extra_settings + "\n")
    arguments = ["--model", "cnn", "--config", config, "--epochs", 4, "--data-dir", toy_dir]
    assert run_main(*arguments, "--output-dir", tmp_path / "whole") == 0
    restore = interrupt_after(monkeypatch, 2)
    assert run_main(*arguments, "--output-dir", tmp_path / "resumed") == 130
    restore()
    (resumed,) = (tmp_path / "resumed" / "runs").iterdir()
    assert run_main("--resume", resumed) == 0
    (whole,) = (tmp_path / "whole" / "runs").iterdir()
    assert_same_run(resumed, whole)


def assert_same_run(actual_run, expected_run):
    """The two run folders' history (but for its timings) and test predictions are equal."""
    for name in ("history.csv", "predictions.csv"):
        expected, actual = pd.read_csv(expected_run / name), pd.read_csv(actual_run / name)
        if name == "history.csv":
            expected, actual = expected.drop(columns=list(TIMING_COLUMNS)), actual.drop(columns=list(TIMING_COLUMNS))
        # Exact on CPU; floating-point reductions on a GPU may differ in the last bits.
        pd.testing.assert_frame_equal(actual, expected, check_exact=True)


def test_run_killed_before_its_first_checkpoint_resumes_from_epoch_one(toy_dir, tmp_path, monkeypatch):
    arguments = ["--model", "cnn", "--config", TINY_CONFIG, "--epochs", 2, "--data-dir", toy_dir]
    assert run_main(*arguments, "--output-dir", tmp_path / "whole") == 0

    def killed(self, epoch, logs=None):  # during epoch 1, before anything of it is saved
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(trainer.EpochRecorder, "on_epoch_end", killed)
        assert run_main(*arguments, "--output-dir", tmp_path / "resumed") == 130
    (resumed,) = (tmp_path / "resumed" / "runs").iterdir()
    assert not (resumed / "checkpoint" / "state.json").exists()
    assert run_main("--resume", resumed) == 0
    (whole,) = (tmp_path / "whole" / "runs").iterdir()
    assert_same_run(resumed, whole)


# === 2. Metrics the test subset cannot define ===


def test_test_subset_without_melanoma_reports_it_as_undefined(toy_dir, tmp_path, capsys):
    arguments = ["--model", "cnn", "--config", TINY_CONFIG, "--data-dir", toy_dir, "--limit", 10]
    assert run_main(*arguments, "--output-dir", tmp_path) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["melanoma_sensitivity"] is None  # no melanoma among the test images
    assert "melanoma sensitivity n/a" in capsys.readouterr().out
    copy = shutil.copytree(run_dir, tmp_path / "copy")
    comparison = compare_runs([run_dir, copy], tmp_path / "comparison", bootstrap_draws=10)
    assert comparison["runs"][0]["metrics"]["melanoma_sensitivity"] is None
    markdown = (tmp_path / "comparison" / "comparison.md").read_text()
    assert "None" not in markdown and "nan" not in markdown


# === 3, 4. Everything that can fail before training fails before any folder is made ===


def offline(monkeypatch):
    import keras.src.applications.vgg16 as keras_vgg16

    def no_network(*args, **kwargs):
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] Temporary failure in name resolution"
        )

    monkeypatch.setattr(keras_vgg16.file_utils, "get_file", no_network)


def test_study_that_cannot_get_its_weights_fails_before_the_first_run(toy_dir, tmp_path, monkeypatch, capsys):
    offline(monkeypatch)
    arguments = ["--model", "all", "--config", TINY_CONFIG, "--weights", "imagenet", "--data-dir", toy_dir]
    assert run_main(*arguments, "--output-dir", tmp_path) == 2
    assert "could not download the ImageNet VGG16 weights" in only_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("weights", ["imagenet", "text file"])
def test_weights_failure_leaves_no_run_folder(weights, toy_dir, tmp_path, monkeypatch, capsys):
    offline(monkeypatch)
    if weights == "text file":
        weights = tmp_path / "weights.h5"
        weights.write_text("not weights")
    arguments = ["--model", "vgg16", "--config", TINY_CONFIG, "--weights", weights, "--data-dir", toy_dir]
    assert run_main(*arguments, "--output-dir", tmp_path / "out") == 2
    assert "VGG16" in only_line(capsys)
    assert not (tmp_path / "out" / "runs").exists()


# === 5. compare checks first and never overwrites ===


def test_refused_comparison_makes_no_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = write_run(tmp_path / "run", *toy_predictions(), complete=False)
    assert run_main("compare", run) == 2
    assert "at least two runs" in only_line(capsys)
    assert not (tmp_path / "results").exists()


def test_comparison_into_an_existing_folder_goes_beside_it(tmp_path, capsys):
    runs = [write_run(tmp_path / name, *toy_predictions(), complete=False) for name in ("a", "b")]
    earlier = tmp_path / "comparison"
    earlier.mkdir()
    (earlier / "comparison.md").write_text("an earlier comparison")
    assert run_main("compare", *runs, "--output", earlier) == 0
    assert (earlier / "comparison.md").read_text() == "an earlier comparison"
    assert (tmp_path / "comparison-2" / "comparison.md").is_file()
    assert "comparison-2" in capsys.readouterr().out


# === 6. One process at a time in a run folder ===


def test_second_resume_of_a_held_run_is_refused_naming_the_holder(damaged_run, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (damaged_run / LOCK_FILENAME).write_text(f"{holder.pid} {socket.gethostname()}\n")
        assert run_main("--resume", damaged_run) == 2
        assert f"process {holder.pid} on {socket.gethostname()} is training this run" in only_line(capsys)
    finally:
        holder.kill()
        holder.wait()
    # Once the holder is dead its lock is stale, and taken over.
    with run_lock(damaged_run):
        assert (damaged_run / LOCK_FILENAME).read_text().split()[0] == str(os.getpid())
    assert not (damaged_run / LOCK_FILENAME).exists()


# === 7. Image size and cache size ===


def test_image_size_above_the_limit_is_refused():
    with pytest.raises(ConfigError, match=r"image_size 100000 is too large: at most 1024"):
        load_config("cnn", None, {"image_size": 100000})


def test_cache_the_disk_cannot_hold_is_refused(toy_dir, tmp_path, monkeypatch):
    paths = locate_images(sorted(path.stem for path in (toy_dir / "images").glob("*.jpg")), toy_dir)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 100_000, 100_000))
    # 80 images of 32 x 32 x 3 bytes: sizes below a gigabyte in MB, not "0.0 GB".
    with pytest.raises(DataError, match=r"the image cache needs 0.2 MB and the disk has 0.1 MB free"):
        load_images(paths, 32, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["cache_dir", "HAM10000_CACHE"])
def test_image_cache_in_a_file_is_one_line(where, toy_dir, tmp_path, monkeypatch, capsys):
    file = tmp_path / "file"
    file.write_text("")
    arguments = ["--model", "cnn", "--config", TINY_CONFIG, "--data-dir", toy_dir, "--output-dir", tmp_path / "out"]
    if where == "cache_dir":
        arguments += ["--set", f"cache_dir={file / 'cache'}"]
    else:
        monkeypatch.setenv("HAM10000_CACHE", str(file))
    assert run_main(*arguments) == 2
    assert f"{file}: is a file, not a folder, so the image cache cannot go to" in only_line(capsys)
    assert not (tmp_path / "out" / "runs").exists()


def make_read_only(monkeypatch, folder):
    """A read-only disk under `folder` (as root, permissions alone would not stop the writes)."""

    def read_only(opener):
        def open_read_only(path, flags_or_mode="r", *args, **kwargs):
            writes = (
                any(mark in flags_or_mode for mark in "wax+")
                if isinstance(flags_or_mode, str)
                else flags_or_mode & (os.O_WRONLY | os.O_RDWR)
            )
            if str(path).startswith(str(folder)) and writes:
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return opener(path, flags_or_mode, *args, **kwargs)

        return open_read_only

    monkeypatch.setattr(os, "open", read_only(os.open))
    monkeypatch.setattr("builtins.open", read_only(open))


def test_read_only_image_cache_names_the_cache_s_flag(toy_dir, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    make_read_only(monkeypatch, cache)
    arguments = ["--model", "cnn", "--config", TINY_CONFIG, "--data-dir", toy_dir, "--output-dir", tmp_path / "out"]
    assert run_main(*arguments, "--set", f"cache_dir={cache}") == 2
    line = only_line(capsys)
    assert (
        f"{cache}: cannot write there (Read-only file system); the image cache needs a writable folder (pass --set cache_dir=DIR"
        in line
    )
    assert "--output-dir" not in line


def test_stale_temporary_cache_files_are_removed_and_a_truncated_cache_rebuilt(toy_dir, tmp_path):
    paths = locate_images(sorted(path.stem for path in (toy_dir / "images").glob("*.jpg")), toy_dir)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".0123456789abcdef-32px.{dead.stdout.strip()}.tmp.npy"
    stale.write_bytes(b"half a cache")
    cache = load_images(paths, 32, cache_dir=tmp_path, verbose=False)
    assert not stale.exists()
    expected = np.array(cache.images)
    with open(cache.path, "r+b") as file:  # as a full disk or a kill leaves it
        file.truncate(cache.path.stat().st_size // 2)
    np.testing.assert_array_equal(load_images(paths, 32, cache_dir=tmp_path, verbose=False).images, expected)


# === 8, 9. Bugs show tracebacks; the machine's and the user's problems one line ===


def test_a_bug_is_not_reported_as_bad_input(monkeypatch):
    def bug(*args, **kwargs):
        raise ValueError("Input 0 of layer 'dense' is incompatible with the layer")

    monkeypatch.setattr("pipeline.run.train_run", bug)
    with pytest.raises(ValueError, match="incompatible"):
        run_main("--model", "cnn", "--config", TINY_CONFIG)


def test_full_disk_is_one_line(toy_dir, tmp_path, monkeypatch, capsys):
    def full(run_dir):
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "environment.json"))

    monkeypatch.setattr("training.run.write_environment", full)
    arguments = ["--model", "cnn", "--config", TINY_CONFIG, "--data-dir", toy_dir, "--output-dir", tmp_path]
    assert run_main(*arguments) == 2
    assert "environment.json: No space left on device" in only_line(capsys)


def test_full_disk_while_a_file_is_written_names_the_file(toy_dir, tmp_path, monkeypatch, capsys):
    def full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a writer reports it: no file name

    monkeypatch.setattr("keras.Model.save", full)
    arguments = ["--model", "cnn", "--config", TINY_CONFIG, "--data-dir", toy_dir, "--output-dir", tmp_path]
    assert run_main(*arguments) == 2
    assert only_line(capsys).endswith("checkpoint/epoch-001.keras: No space left on device (free some space)\n")


def test_a_failing_gallery_is_a_warning_and_the_evaluation_is_written(toy_dir, tmp_path, monkeypatch, capsys):
    def unexplainable(*args, **kwargs):  # a backbone whose feature map Grad-CAM cannot cut out
        raise ValueError("Output with path '' is not connected to inputs")

    monkeypatch.setattr("inference.gallery.PredictorGradCAM.heatmaps", unexplainable)
    arguments = ["--model", "cnn", "--config", TINY_CONFIG, "--data-dir", toy_dir, "--output-dir", tmp_path]
    assert run_main(*arguments) == 0
    assert (
        "warning: the Grad-CAM gallery failed (ValueError: Output with path '' is not connected to inputs)"
        in only_line(capsys)
    )
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "metrics.json").is_file() and (run_dir / "confusion_matrix.png").is_file()
    assert (
        "## Metrics" in (run_dir / "report.md").read_text() and "## Gallery" not in (run_dir / "report.md").read_text()
    )


def test_output_that_is_a_file_is_one_line(toy_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    arguments = ["--model", "cnn", "--config", TINY_CONFIG, "--data-dir", toy_dir, "--output-dir", tmp_path / "file"]
    assert run_main(*arguments) == 2
    assert "file: is a file, not a folder" in only_line(capsys)
    runs = [write_run(tmp_path / name, *toy_predictions(), complete=False) for name in ("a", "b")]
    assert run_main("compare", *runs, "--output", tmp_path / "file") == 2
    assert "file: is a file, not a folder" in only_line(capsys)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda run: (run / "config.yaml").write_text(""), "config.yaml: has no 'model' setting"),
        (lambda run: (run / "config.yaml").write_text("model: [cnn\n"), "config.yaml: not valid YAML"),
        (
            lambda run: (run / "config.yaml").write_bytes(b"model: cnn\nseed: \xff\xfe\n"),
            "config.yaml: not a text file in UTF-8",
        ),
        (
            lambda run: (run / "checkpoint" / "state.json").write_text('{"epochs_completed": 1, "colour": 2}'),
            "state.json: not a training state (unexpected ['colour']",
        ),
        (
            lambda run: (run / "checkpoint" / "state.json").write_text('{"epochs_completed": 1, "sta'),
            "state.json: damaged, not JSON",
        ),
        (
            lambda run: (run / "checkpoint" / "epoch-001.keras").write_bytes(b"PK\x03\x04 half a zip"),
            "epoch-001.keras: damaged checkpoint",
        ),
    ],
    ids=[
        "empty config",
        "malformed config",
        "config not UTF-8",
        "state unknown key",
        "state half-written",
        "corrupt checkpoint",
    ],
)
def test_damaged_run_folder_is_one_line_naming_the_file(damage, message, damaged_run, capsys):
    damage(damaged_run)
    assert run_main("--resume", damaged_run) == 2
    assert message in only_line(capsys)
    assert not (damaged_run / LOCK_FILENAME).exists()


@pytest.mark.parametrize(
    "backend, reason",
    [("torch", "No module named 'torch'"), ("nosuchbackend", "Unable to import backend : nosuchbackend")],
    ids=["not installed", "typo"],
)
def test_missing_or_misspelt_keras_backend_is_one_line(backend, reason):
    environment = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run(
        [sys.executable, "main.py", "--help"], cwd=REPO_ROOT, env=environment, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: Keras cannot load its backend {backend!r} ({reason})")
    assert result.stderr.count("\n") == 1


# === 10. Messages that say what happened ===


@pytest.mark.parametrize("damaged", ["predictions.csv", "history.csv"])
def test_an_extra_field_in_the_first_row_is_one_line_naming_the_file(damaged, tmp_path, capsys):
    runs = [write_run(tmp_path / name, *toy_predictions()) for name in ("a", "b")]
    path = runs[0] / damaged
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1] + ",", *lines[2:]]) + "\n")  # sed -i '2s/$/,/'
    assert run_main("evaluate", runs[0]) == 2
    assert f"{damaged}: not a readable CSV file (line 2 has more fields than the header's" in only_line(capsys)
    assert run_main("compare", *runs, "--output", tmp_path / "comparison") == 2
    assert f"{damaged}: not a readable CSV file (line 2" in only_line(capsys)


@pytest.mark.parametrize("damage", [b"", "half", b"<html>not found</html>"], ids=["empty", "truncated", "not a zip"])
@pytest.mark.parametrize(
    "command", [["predict", "IMAGE"], ["serve", "--port", "0"], ["evaluate", "--tta"]], ids=lambda command: command[0]
)
def test_damaged_model_file_is_one_line_saying_so(command, damage, study, real_toy_dir, tmp_path, capsys):
    run_dir = shutil.copytree(next((study / "runs").glob("*-cnn")), tmp_path / "run")
    model = run_dir / "model.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2] if damage == "half" else damage)
    image = next((real_toy_dir / "images").iterdir())
    arguments = [image if argument == "IMAGE" else argument for argument in command[1:]]
    assert run_main(command[0], run_dir, *arguments) == 2
    assert (
        "model.keras: damaged, not a .keras archive (copy the run's model.keras again, or train the run again)"
        in only_line(capsys)
    )


def test_unknown_head_option_names_it():
    with pytest.raises(
        ConfigError, match=r"^unknown head option 'size' \(expected pooling, dense_units, dropout, metadata_units\)$"
    ):
        load_config("cnn", None, {"head": {"size": 3}})


def test_every_image_unreadable_says_so(toy_dir, tmp_path, capsys):
    data = copy_toy_dir(toy_dir, tmp_path / "data")
    for image in (data / "images").glob("*.jpg"):
        image.write_text("not an image")
    arguments = ["--model", "cnn", "--config", TINY_CONFIG, "--data-dir", data, "--set", "drop_missing_images=true"]
    assert run_main(*arguments, "--output-dir", tmp_path, "--set", f"cache_dir={tmp_path / 'cache'}") == 2
    assert "none of the 80 images can be decoded" in only_line(capsys)


def test_interrupted_evaluation_does_not_speak_of_resuming(monkeypatch, tmp_path, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate_run", interrupted)
    assert run_main("evaluate", tmp_path) == 130
    assert capsys.readouterr().err == "\ninterrupted\n"


def test_resume_refuses_settings_it_cannot_change(damaged_run, capsys):
    assert run_main("--resume", damaged_run, "--epochs", 10, "--set", "lr=0.1") == 2
    assert "it can change data_dir, cache_dir, workers, devices, compilation_cache, not epochs, lr" in only_line(capsys)
    assert run_main("--resume", damaged_run, "--model", "vgg16") == 2
    assert "drop --model, --config, --folds and --seeds" in only_line(capsys)
    with pytest.raises(ConfigError, match="not epochs"):
        resume_run(damaged_run, {"epochs": 10})


def test_resume_of_a_finished_run_says_it_is_finished(study, capsys):
    run_dir = next((study / "runs").glob("*-cnn"))
    assert run_main("--resume", run_dir) == 2
    assert "finished (trained and evaluated), nothing to resume" in only_line(capsys)


# === 11, 12. The console: the project's own lines ===


def test_console_shows_only_the_project_lines_unless_verbose(tmp_path):
    def stderr(*flags):
        command = [sys.executable, str(REPO_ROOT / "main.py"), "--model", "resnet", *flags]
        # As from a shell: not the log level TensorFlow set in this process when it was imported.
        environment = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
        return subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True).stderr

    error = stderr()
    assert (
        error.startswith("error: unknown model 'resnet' (available: cnn, convnext_tiny, densenet, densenet121, ")
        and error.count("\n") == 1
    )
    assert len(stderr("--verbose").splitlines()) > 1  # TensorFlow's start-up lines


def test_prediction_progress_in_a_log_file_has_no_carriage_returns(study, real_toy_dir, capsys):
    from dataset import prepare_data

    run_dir = next((study / "runs").glob("*-cnn"))
    data = prepare_data(real_toy_dir, image_size=32, split_file=run_dir / "split.csv", verbose=False)
    _, cache_rows, _ = data.subset("test")
    predictor = Predictor.load(run_dir)
    capsys.readouterr()
    predictor.predict(data.cache.images, rows=cache_rows, batch_size=4, verbose="auto")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "\r" not in out and "\b" not in out


# === 13. The kept model loads with plain Keras ===


def test_kept_model_loads_with_plain_keras_in_a_fresh_interpreter(study, tmp_path):
    run_dir = next((study / "runs").glob("*-cnn"))
    script = (
        f"import keras; model = keras.saving.load_model({str(run_dir / 'model.keras')!r}); print(model.output.shape)"
    )
    # From an empty folder, so that nothing of this project can be imported.
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(None, 7)" in result.stdout


# === 14. Issue 39: settings honoured or refused, never dropped ===


def test_null_setting_is_honoured_where_it_means_something(tmp_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text("weights: imagenet\ncompilation_cache: /tmp/xla\n")
    config = load_config("vgg16", config_file, parse_settings(["weights=null", "compilation_cache=null"]))
    assert (config.weights, config.compilation_cache) == (None, None)


@pytest.mark.parametrize("assignment", ["epochs=null", "lr=null", "image_size=null", "head=null", "model=null"])
def test_null_setting_that_needs_a_value_is_refused(assignment, toy_dir, tmp_path, capsys):
    arguments = ["--config", TINY_CONFIG, "--data-dir", toy_dir, "--output-dir", tmp_path]
    assert run_main("--model", "cnn", *arguments, "--set", assignment) == 2
    line = only_line(capsys)
    assert (
        f"setting '{assignment.split('=')[0]}' must be " in line
        and ", not null (leave it out to keep the config file's" in line
    )
    assert not (tmp_path / "runs").exists()


def test_setting_without_a_value_is_refused(toy_dir, tmp_path, capsys):
    arguments = ["--model", "cnn", "--config", TINY_CONFIG, "--data-dir", toy_dir, "--output-dir", tmp_path]
    assert run_main(*arguments, "--set", "epochs=") == 2
    assert "--set 'epochs=': no value after '='" in only_line(capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "assignments, message",
    [
        (
            ["class_weight_boost={mel: -2}"],
            "class_weight_boost's factor for mel must be a positive number (e.g. {mel: 1.5}); got -2",
        ),
        (
            ["class_weight_boost={mel: abc}"],
            "class_weight_boost's factor for mel must be a positive number (e.g. {mel: 1.5}); got 'abc'",
        ),
        (["class_weight_boost={mel: .inf}"], "class_weight_boost's factor for mel must be a positive number"),
        (
            ["loss=focal", "focal_gamma=-3"],
            "focal_gamma is the focal loss's focusing exponent, 0 or more (2 is usual); got -3.0",
        ),
        (["min_lr=-1"], "min_lr is the floor of the plateau schedule's cuts, 0 or more; got -1.0"),
    ],
)
def test_out_of_range_setting_is_refused_before_any_folder_exists(assignments, message, toy_dir, tmp_path, capsys):
    arguments = ["--model", "cnn", "--config", TINY_CONFIG, "--data-dir", toy_dir, "--output-dir", tmp_path]
    sets = [argument for assignment in assignments for argument in ("--set", assignment)]
    assert run_main(*arguments, *sets) == 2
    assert message in only_line(capsys)
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def under_jax(monkeypatch):
    """`use_compilation_cache` as under JAX; without setting JAX's cache folder for this process."""
    import jax

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr(jax.config, "update", lambda *args: None)


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_compilation_cache_in_a_file_is_one_line(where, under_jax, tmp_path):
    file = tmp_path / "file"
    file.write_text("")
    folder = file if where == "file" else file / "xla"
    config = load_config("cnn", TINY_CONFIG, {"compilation_cache": str(folder)})
    with pytest.raises(
        ConfigError,
        match=rf"^{file}: is a file, not a folder, so the compilation cache cannot go to {folder} \(set compilation_cache to a folder, or none\)$",
    ):
        use_compilation_cache(config)


@pytest.mark.parametrize("value", ["", " "])
def test_empty_compilation_cache_is_refused(value):
    with pytest.raises(ConfigError, match=rf"^compilation_cache must be auto, none or a folder; got '{value}'$"):
        load_config("cnn", TINY_CONFIG, {"compilation_cache": value})


def test_read_only_compilation_cache_is_left_out_in_one_line(under_jax, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "xla"
    folder.mkdir()
    make_read_only(monkeypatch, folder)
    config = load_config("cnn", TINY_CONFIG, {"compilation_cache": str(folder)})
    assert use_compilation_cache(config) is None
    out = capsys.readouterr().out
    assert (
        out
        == f"Note: the compilation cache {folder} cannot be written (Read-only file system): compiling without it (set compilation_cache to a writable folder, or none)\n"
    )


def test_an_image_in_both_part_folders_with_different_content_is_named(toy_dir, tmp_path):
    parts = [tmp_path / "HAM10000_images_part_1", tmp_path / "HAM10000_images_part_2"]
    for part in parts:
        part.mkdir()
    images = sorted((toy_dir / "images").glob("*.jpg"))
    for image in images[:3]:  # the same file in both: a copy, not a conflict
        for part in parts:
            shutil.copy(image, part / image.name)
    for name, content in [(images[3].name, images[3]), (images[4].name, images[4])]:
        shutil.copy(content, parts[0] / name)
    shutil.copy(images[5], parts[1] / images[3].name)  # another image under the same name
    with pytest.warns(UserWarning) as caught:
        found = locate_images([image.stem for image in images[:5]], tmp_path)
    assert [str(warning.message) for warning in caught] == [
        f"{tmp_path}: two folders hold different images under the same name (1: {images[3].stem}); using the first found "
        "(HAM10000_images_part_1/ over HAM10000_images_part_2/ for the first): delete the wrong copies"
    ]
    assert found[images[3].stem] == parts[0] / images[3].name
