"""Files written whole or not at all.

Every file the project writes (splits, caches, models, reports) goes through `atomic_path`: the
content is written to a temporary file beside the target and moved over it in one `os.replace`,
so an interrupted run leaves either the old file or the new one, never half of one.
"""

import contextlib
import json
import os
from pathlib import Path


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
    finally:
        temporary.unlink(missing_ok=True)


def new_folder(path):
    """Creates `path`, or if it exists `path-2`, `path-3`, ...: an earlier folder is never reused."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    attempt = 1
    while True:
        candidate = path if attempt == 1 else path.with_name(f"{path.name}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            attempt += 1


def write_text(path, text):
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_bytes(path, data):
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_json(path, data):
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path, frame):
    """Writes a pandas DataFrame as CSV without its index."""
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)
