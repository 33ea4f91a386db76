"""What the console shows: the native libraries' start-up lines, and the warnings of a failed step, kept out of it."""

import contextlib
import os
import sys
import warnings


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


@contextlib.contextmanager
def warnings_only_on_success():
    """Holds back the warnings raised meanwhile, and shows them only if the block ends without an error.

    Keras warns once per layer it skips while loading a weights file that does not fit (197 lines
    for one EfficientNet-Lite file given to another), then raises: the one-line error says it all.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
