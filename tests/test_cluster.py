"""A study's runs as submitit jobs (training.cluster, `main.py --submit local`): 4 toy runs, 2 at
once, one of them pre-empted mid-run, requeued and resumed; the summary that of the same study
trained one run after another."""

import json
import os
import re
import signal
import threading
import time

import pytest
from conftest import TINY_CONFIG, run_main

from common.run_folder import CHECKPOINT_DIR, LOCK_FILENAME, STATE_FILENAME

pytest.importorskip("submitit", reason="jobs need the .[cluster] extra")
# Under pytest-xdist, one worker runs them all, so that the two studies are trained once.
pytestmark = pytest.mark.xdist_group("cluster")

STUDY = ["--model", "cnn", "--folds", 2, "--seeds", 2, "--config", TINY_CONFIG, "--epochs", 3]


@pytest.fixture(scope="module")
def studies(toy_dir, tmp_path_factory):
    """The study trained here run after run, then as local jobs, 2 at once, the first run to
    checkpoint an epoch pre-empted (SIGUSR2, Slurm's and submitit's signal) right after it.

    Returns (the sequential study folder, the jobs' study folder, (the pre-empted run folder, its
    epochs completed when signalled), wall seconds of each).
    """
    sequential, submitted = tmp_path_factory.mktemp("sequential"), tmp_path_factory.mktemp("submitted")
    arguments = [*STUDY, "--data-dir", toy_dir]
    started = time.monotonic()
    assert run_main(*arguments, "--output-dir", sequential) == 0
    seconds = {"sequential": time.monotonic() - started}

    status = []
    started = time.monotonic()
    main_thread = threading.Thread(
        target=lambda: status.append(run_main(*arguments, "--submit", "local", "--jobs", 2, "--output-dir", submitted))
    )
    main_thread.start()
    preempted = preempt_first_checkpointed_run(submitted / "runs", main_thread)
    main_thread.join()
    seconds["jobs"] = time.monotonic() - started
    assert status == [0]
    (sequential_study,), (submitted_study,) = ((folder / "studies").iterdir() for folder in (sequential, submitted))
    print(f"wall time: {seconds}")
    return sequential_study, submitted_study, preempted, seconds


def preempt_first_checkpointed_run(runs_dir, main_thread):
    """Sends SIGUSR2 to the job training the first run that has checkpointed an epoch, as a
    cluster does before it pre-empts a job; returns that run's folder and its completed epochs.

    The job is stopped while it is signalled: the toy run's last epochs take a second or two, and
    a loaded machine could delay this poll, or the job's handler, past the end of its training,
    which leaves the requeued job nothing to resume.
    """
    while main_thread.is_alive():
        for state in runs_dir.glob(f"*/{CHECKPOINT_DIR}/{STATE_FILENAME}"):
            run_dir = state.parent.parent
            pid = int((run_dir / LOCK_FILENAME).read_text().split()[0])
            os.kill(pid, signal.SIGSTOP)
            epochs = json.loads(state.read_text())["epochs_completed"]
            os.kill(pid, signal.SIGUSR2)
            os.kill(pid, signal.SIGCONT)
            return run_dir, epochs
        time.sleep(0.05)
    pytest.fail("the jobs ended before any of them checkpointed an epoch")


def summary(study_dir):
    """summary.json without what differs between two studies of the same runs: their folders' names."""

    def strip(value):
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items() if key not in ("run_dir", "title")}
        return [strip(item) for item in value] if isinstance(value, list) else value

    return strip(json.loads((study_dir / "summary" / "summary.json").read_text()))


def test_jobs_give_the_summary_of_the_sequential_study(studies):
    sequential, submitted, _, _ = studies
    runs = json.loads((submitted / "study.json").read_text())["runs"]
    assert all(run["finished"] for run in runs) and len({run["run_dir"] for run in runs}) == 4
    assert len(list((submitted.parent.parent / "runs").iterdir())) == 4  # one folder per run: none trained twice
    assert summary(submitted) == summary(sequential)


def test_a_preempted_job_is_requeued_and_resumes_its_run(studies):
    _, submitted, (preempted, epochs), _ = studies
    assert epochs < 3, "the job was signalled after its last epoch: nothing was left to resume"
    logs = "\n".join(path.read_text() for path in (submitted / "jobs").glob("*_log.*"))
    assert "this job is preempted" in logs and "Requeued job" in logs
    # The epoch it checkpointed when signalled, or a later one that it was finishing writing then.
    resumed = [int(epoch) for epoch in re.findall(rf"Resuming {re.escape(preempted.name)} after epoch (\d+)", logs)]
    assert len(resumed) == 1 and epochs <= resumed[0] < 3
    assert len((preempted / "history.csv").read_text().splitlines()) == 1 + 3


def test_submit_options_and_flags_are_checked(toy_dir, tmp_path, capsys):
    arguments = [*STUDY, "--data-dir", toy_dir, "--output-dir", tmp_path]
    assert run_main(*arguments, "--jobs", 2) == 2
    assert "error: --jobs and --submit-option set the jobs of --submit" in capsys.readouterr().err
    assert run_main(*arguments, "--submit", "local", "--submit-option", "timeout_min=soon") == 2
    assert "error: --submit-option timeout_min='soon': expected a whole number" in capsys.readouterr().err
    assert not (tmp_path / "studies").exists()  # checked before the study folder is made


@pytest.mark.parametrize("value", ["-5", "0"])
def test_a_time_limit_below_a_minute_is_refused_before_submitting(value, toy_dir, tmp_path, capsys):
    arguments = [*STUDY, "--data-dir", toy_dir, "--output-dir", tmp_path, "--submit", "local"]
    assert run_main(*arguments, "--submit-option", f"timeout_min={value}") == 2
    assert capsys.readouterr().err == f"error: --submit-option timeout_min={value}: must be at least 1\n"
    assert not (tmp_path / "studies").exists()


def test_an_unknown_submit_option_names_the_executor_s_options(toy_dir, tmp_path, capsys):
    arguments = [*STUDY, "--data-dir", toy_dir, "--output-dir", tmp_path, "--submit", "local"]
    assert run_main(*arguments, "--submit-option", "foo=1") == 2
    assert capsys.readouterr().err == (
        "error: --submit-option foo: not a parameter of submitit's local executor "
        "(it takes cpus_per_task, gpus_per_node, mem_gb, nodes, stderr_to_stdout, tasks_per_node, timeout_min)\n"
    )
    assert run_main(*arguments, "--submit-option", "timeout_min") == 2
    assert "expected KEY=VALUE, e.g. --submit-option timeout_min=240" in capsys.readouterr().err
