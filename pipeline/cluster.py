"""A study's runs as jobs through submitit: on a Slurm cluster, or on this machine, one run per GPU.

    python main.py --model all --folds 5 --config configs/gpu.yaml --submit slurm \\
        --submit-option slurm_partition=gpu --submit-option timeout_min=240
    python main.py --model all --folds 3 --config configs/gpu.yaml --submit local --jobs 4

One job per unfinished run, through submitit (`pip install -e '.[cluster]'`): its Slurm executor,
an array job of which at most `--jobs` run at once, or its local executor, which runs each job as a
process of this machine, `--jobs` at a time, job k of those running on GPU k. The study folder,
on a disk every node sees, is all the jobs share:

    study.json               each job records its run folder, then marks the run finished once evaluated
    jobs/study.json.lock     held while a job updates study.json
    jobs/run-<i>.lock        held by the job training the study's run i: no run is trained by two jobs
    jobs/<job id>_*          submitit's pickles, and each job's log (<job id>_0_log.out, .err)

A job pre-empted or at its time limit (Slurm's signal, or the local executor's before its
timeout) is requeued by submitit and resumes its run from its last completed epoch, as
`--resume` does (`RunJob.checkpoint`). A job killed outright fails; submitting the study again
(the same command, or `--resume STUDY --submit ...`) resumes its run. The job that finishes the
study's last run writes its summary.
"""

import os
import queue
import shlex
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import submitit

from common.errors import UserError
from common.files import file_lock, write_json
from common.study_folder import STUDY_FILENAME, SUMMARY_DIR, read_study
from evaluation import summarize_study
from pipeline.run import evaluate_trained_run
from training.config import TrainConfig
from training.run import check_resume_overrides
from training.study import describe, train_planned_run
from training.trainer import check_weights

EXECUTORS = ("local", "slurm")
JOBS_DIR = "jobs"
UPDATE_LOCK = "study.json.lock"
REPO_ROOT = Path(__file__).resolve().parent.parent
# Requeues of one job after pre-emption or its time limit: a long run on a cluster with short
# time limits is many jobs in a row.
MAX_REQUEUES = 100
# The local executor signals a job to checkpoint shortly before this limit; a week, so never.
LOCAL_TIMEOUT_MIN = 7 * 24 * 60


class RunJob(submitit.helpers.Checkpointable):
    """One run of a study as a job: trains it (or resumes it from its last completed epoch),
    evaluates it, marks it finished in study.json; the job that finishes the last run writes the
    study's summary.

    Args:
        study_dir: the study folder.
        index: the run's place in study.json's `runs`.
        overrides: settings that may differ on the nodes (`RESUME_OVERRIDES`).
    """

    def __init__(self, study_dir, index, overrides=None):
        self.study_dir = str(study_dir)
        self.index = index
        self.overrides = overrides or {}

    def __call__(self):
        study_dir = Path(self.study_dir)
        with file_lock(study_dir / JOBS_DIR / f"run-{self.index}.lock", wait=False) as held:
            if not held:
                raise UserError(f"{study_dir}: run {self.index + 1} is being trained by another job")
            run = read_study(study_dir)["runs"][self.index]
            if not run["finished"]:
                started = time.monotonic()
                changes = check_resume_overrides(self.overrides)
                config = TrainConfig.from_dict({**run["config"], **changes}, study_dir / STUDY_FILENAME)
                print(f"run {self.index + 1} ({describe(run)}) of {study_dir}")
                trained = train_planned_run(
                    study_dir, run, config, changes, lambda run_dir: self._update(run_dir=str(run_dir))
                )
                evaluate_trained_run(trained)
                self._update(finished=True, seconds=round(time.monotonic() - started, 1))
        with file_lock(study_dir / JOBS_DIR / UPDATE_LOCK):
            # One job at a time sees the study: only the last to finish finds every run finished.
            if all(run["finished"] for run in read_study(study_dir)["runs"]) and not (study_dir / SUMMARY_DIR).exists():
                summarize_study(study_dir)

    def _update(self, **values):
        """Sets values of this job's run in study.json, which other jobs update too."""
        with file_lock(Path(self.study_dir) / JOBS_DIR / UPDATE_LOCK):
            study = read_study(self.study_dir)
            study["runs"][self.index].update(values)
            write_json(Path(self.study_dir) / STUDY_FILENAME, study)


def submit_study(study_dir, executor, *, jobs=None, options=None, overrides=None):
    """Submits one job per unfinished run of the study.

    Local jobs are waited for, `jobs` at a time; Slurm's are left to the cluster once submitted.

    Args:
        study_dir: the study folder (`training.study.start_study`'s).
        executor: "local" or "slurm".
        jobs: at most this many at once (local: default one per GPU, or 1; Slurm: no limit).
        options: submitit's parameters (`timeout_min`, `gpus_per_node`, `slurm_partition`, ...).
        overrides: as `RunJob` takes them.

    Raises:
        UserError: an unknown executor or option, or local jobs that failed (naming their logs).
    """
    check_options(executor, options or {})
    study_dir = Path(study_dir)
    runs = read_study(study_dir)["runs"]
    pending = [index for index, run in enumerate(runs) if not run["finished"]]
    changes = check_resume_overrides(overrides)
    # The nodes may have no internet: every pretrained weight is fetched (into Keras's cache) first.
    check_weights([TrainConfig.from_dict({**runs[index]["config"], **changes}) for index in pending])
    calls = [RunJob(study_dir, index, changes) for index in pending]
    if not calls:
        print(f"{study_dir.name}: every run is finished")
        return []
    if executor == "slurm":
        return _submit_to_slurm(study_dir, calls, jobs, options or {})
    return _run_locally(study_dir, calls, jobs, options or {})


# submitit's shared parameters that must be at least this: a job of timeout_min 0 is killed at once.
MINIMUM_OPTIONS = {
    "timeout_min": 1,
    "slurm_time": 1,
    "nodes": 1,
    "cpus_per_task": 1,
    "tasks_per_node": 1,
    "gpus_per_node": 0,
}
KIND_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}
# Parameters this module sets itself.
OWN_OPTIONS = ("name", "setup")


def valid_options(executor):
    """The `--submit-option` names the executor takes: submitit's shared ones, and its own prefixed with its name."""
    shared = submitit.AutoExecutor._valid_parameters()
    own = submitit.core.plugins.get_executors()[executor]._valid_parameters()
    return sorted(shared - set(OWN_OPTIONS)) + sorted(f"{executor}_{name}" for name in own - set(OWN_OPTIONS))


def check_options(executor, options):
    """Raises UserError for an unknown executor, or parameters submitit does not take for it (or out of range)."""
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r} (expected {', '.join(EXECUTORS)})")
    valid = valid_options(executor)
    unknown = [name for name in options if name not in valid]
    if unknown:
        raise UserError(
            f"--submit-option {unknown[0]}: not a parameter of submitit's {executor} executor (it takes {', '.join(valid)})"
        )
    types = submitit.AutoExecutor._typed_parameters()
    for name, value in options.items():
        kind = types.get(name)
        fits = (
            isinstance(value, bool)
            if kind is bool
            else isinstance(value, (int, float) if kind is float else kind) and not isinstance(value, bool)
        )
        if kind is not None and not fits:
            raise UserError(f"--submit-option {name}={value!r}: expected {KIND_NAMES[kind]}")
        if name in MINIMUM_OPTIONS and isinstance(value, (int, float)) and value < MINIMUM_OPTIONS[name]:
            raise UserError(f"--submit-option {name}={value}: must be at least {MINIMUM_OPTIONS[name]}")
        if name == "mem_gb" and value <= 0:
            raise UserError(f"--submit-option mem_gb={value}: must be positive")
    with tempfile.TemporaryDirectory() as folder:
        _executor(Path(folder), executor, options)


def _executor(study_dir, cluster, options, setup=()):
    """submitit's executor, its jobs' files in the study's jobs/ folder, this checkout on their path."""
    try:
        executor = submitit.AutoExecutor(
            folder=study_dir / JOBS_DIR, cluster=cluster, **{f"{cluster}_max_num_timeout": MAX_REQUEUES}
        )
    except RuntimeError as error:  # no srun on this machine
        raise UserError(f"--submit {cluster}: {error} (submit from a machine of the cluster, its login node)") from None
    path = f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"
    try:
        executor.update_parameters(name=study_dir.name, **{f"{cluster}_setup": [path, *setup]}, **options)
    except (NameError, ValueError, TypeError, AssertionError) as error:
        raise UserError(f"--submit-option: {str(error).splitlines()[0]}") from None
    return executor


def _submit_to_slurm(study_dir, calls, jobs, options):
    parameters = {"gpus_per_node": 1, "slurm_array_parallelism": jobs or len(calls), **options}
    submitted = _executor(study_dir, "slurm", parameters).submit_array(calls)
    print(
        f"Submitted {len(submitted)} Slurm jobs (array {submitted[0].job_id.split('_')[0]}), at most "
        f"{parameters['slurm_array_parallelism']} at once; their logs: {study_dir / JOBS_DIR}. The last to finish "
        f"writes {study_dir / SUMMARY_DIR}; `python main.py --resume {study_dir} --submit slurm` submits what has not finished."
    )
    return submitted


def _run_locally(study_dir, calls, jobs, options):
    """Runs the jobs as processes of this machine, `jobs` at a time, slot k on GPU k; waits for them all."""
    gpus = local_gpus()
    slots = jobs or max(len(gpus), 1)
    free = queue.Queue()
    for slot in range(slots):
        free.put(slot)

    def run(call):
        # At most `slots` of these run at once (the pool's size), so a slot is always free here.
        slot = free.get()
        setup = [f"export CUDA_VISIBLE_DEVICES={gpus[slot % len(gpus)]}"] if gpus else []
        parameters = {"timeout_min": LOCAL_TIMEOUT_MIN, **options}
        job = _executor(study_dir, "local", parameters, setup).submit(call)
        print(
            f"run {call.index + 1}: local job {job.job_id}{f' on GPU {gpus[slot % len(gpus)]}' if gpus else ''}; log {job.paths.stdout}"
        )
        try:
            job.wait()
            return job
        finally:
            free.put(slot)

    with ThreadPoolExecutor(max_workers=slots) as pool:
        finished = list(pool.map(run, calls))
    failed = [job for job in finished if job.state != "FINISHED" or job.exception() is not None]
    if failed:
        logs = ", ".join(str(job.paths.stderr) for job in failed)
        raise UserError(
            f"{len(failed)} of {len(finished)} jobs failed (their logs: {logs}); `python main.py --resume {study_dir} --submit local` resumes them"
        )
    return finished


def local_gpus():
    """The GPUs of this machine a local job may use: `CUDA_VISIBLE_DEVICES`'s, else every one nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu for gpu in visible.split(",") if gpu.strip()]
    try:
        listed = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [str(index) for index, line in enumerate(listed.splitlines()) if line.startswith("GPU")]
