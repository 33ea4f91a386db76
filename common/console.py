"""What the console shows: the native libraries' start-up lines kept out of it."""

import contextlib
import os
import sys


@contextlib.contextmanager
def native_stderr_silenced(silenced):
    """Sends what C++ code writes to stderr to /dev/null meanwhile.

    TensorFlow logs its start-up (oneDNN, CUDA, absl) before absl's logging is set up, where
    TF_CPP_MIN_LOG_LEVEL does not reach. Python's own errors are raised after stderr is back.
    """
    if not silenced:
        yield
        return
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
