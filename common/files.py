"""Files written whole or not at all.

Every file the project writes (splits, caches, models, reports) goes through `atomic_path`: the
content is written to a temporary file beside the target and moved over it in one `os.replace`,
so an interrupted run leaves either the old file or the new one, never half of one.
"""

import contextlib
import datetime
import fcntl
import json
import os
import tempfile
from pathlib import Path

from common.errors import DataError, UserError


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; on success, moves it over `path` in one step.

    The temporary name keeps the suffix, because writers such as `keras.Model.save`,
    `numpy.save` and `matplotlib.pyplot.savefig` choose their format by it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        # A writer's own error (a full disk mid-write) often names no file: name the one being written.
        if error.filename is None:
            error.filename = str(path)
        raise
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def file_lock(path, wait=True):
    """Holds an exclusive advisory lock (`flock`) on `path` for one process at a time, across
    machines on a shared disk that supports it (NFSv4, Lustre, ...).

    The system releases it when the process ends, however it ends (killed, pre-empted), so no
    lock is ever left stale. Yields True; with `wait=False`, yields False at once where another
    process holds it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def process_alive(pid):
    """Whether a process with this id runs on this machine (a lock or temporary file it left is stale if not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def blocking_file(path):
    """`path`, or the nearest folder above it, where it exists as a file, not a folder; None if there is none."""
    path = Path(path)
    return next((parent for parent in (path, *path.parents) if parent.exists() and not parent.is_dir()), None)


def check_writable(folder):
    """Raises UserError unless files can be written in `folder` (created if missing)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(f"{folder}: cannot write there ({error.strerror})") from None


def timestamp(now=None):
    """ "20261123-101500": how every run, study, search and comparison folder's name begins."""
    return (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")


def new_stamped_folder(parent, name, now=None):
    """A new folder `parent/<timestamp>-<name>` (`new_folder`: "-2", "-3", ... for a second in the same second)."""
    return new_folder(Path(parent) / f"{timestamp(now)}-{name}")


def new_folder(path):
    """Creates `path`, or if it exists `path-2`, `path-3`, ...: an earlier folder is never reused.

    Raises:
        UserError: `path`, or a folder above it, is a file; or the folder cannot be created
            (read-only or full disk, no permission).
    """
    path = Path(path)
    blocking = blocking_file(path)
    if blocking is not None:
        raise UserError(f"{blocking}: is a file, not a folder (pass a folder that does not exist yet)")
    attempt = 1
    while True:
        candidate = path if attempt == 1 else path.with_name(f"{path.name}-{attempt}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            attempt += 1
        except OSError as error:
            raise UserError(f"{candidate}: cannot create the folder ({error.strerror})") from None


def write_text(path, text):
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_bytes(path, data):
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def read_json(path, missing, damaged_remedy=""):
    """The JSON value in `path`.

    Raises:
        DataError: the file does not exist (with the message `missing`), or is not JSON (naming
            the file, then `damaged_remedy`).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: damaged, not JSON ({error}){damaged_remedy}") from None


def write_json(path, data):
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path, frame):
    """Writes a pandas DataFrame as CSV without its index."""
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)
