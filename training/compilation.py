"""JAX's persistent compilation cache: compiled training steps kept on disk between processes.

Under JAX every training, validation and prediction step is compiled with XLA before its first
use, which took 4 to 6 minutes per model on a GPU machine whose CPUs eleven runs shared. With the
cache, the runs of a study that share an architecture, a resumed run and a re-run load the
compiled steps instead:

    compilation_cache: auto       # (config) <cache_dir>/jax-compilation, beside the image cache
    compilation_cache: /scratch/xla
    compilation_cache: none       # compile afresh every time

The cache is JAX's own (`jax_compilation_cache_dir`): its entries are keyed by the computation,
the device and the JAX version, so a stale entry is never used. It is set once per process, the
first time a run asks for it; TensorFlow and PyTorch ignore it. A cache folder that cannot be
written (a read-only disk) only costs the compile time: the run goes on without it and says so.
"""

import tempfile
from pathlib import Path

import keras

from common.errors import ConfigError
from common.files import blocking_file
from dataset.cache import default_cache_dir

FOLDER_NAME = "jax-compilation"


def use_compilation_cache(config):
    """Turns on JAX's persistent compilation cache where the config asks for it; returns its folder,
    or None (none asked for, or a folder that cannot be written: noted in one line).

    Raises:
        ConfigError: the folder, or one above it, is a file.
    """
    if keras.backend.backend() != "jax" or config.compilation_cache is None:
        return None
    import jax

    if config.compilation_cache == "auto":
        if jax.config.jax_compilation_cache_dir:  # JAX_COMPILATION_CACHE_DIR, set by the user
            return Path(jax.config.jax_compilation_cache_dir)
        folder = (Path(config.cache_dir) if config.cache_dir else default_cache_dir()) / FOLDER_NAME
    else:
        folder = Path(config.compilation_cache)
    blocking = blocking_file(folder)
    if blocking is not None:
        raise ConfigError(
            f"{blocking}: is a file, not a folder, so the compilation cache cannot go to {folder} (set compilation_cache to a folder, or none)"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        print(
            f"Note: the compilation cache {folder} cannot be written ({error.strerror}): compiling without it (set compilation_cache to a writable folder, or none)"
        )
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return folder
