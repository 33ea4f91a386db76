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
first time a run asks for it; TensorFlow and PyTorch ignore it.
"""

from pathlib import Path

import keras

from dataset.cache import default_cache_dir

FOLDER_NAME = "jax-compilation"


def use_compilation_cache(config):
    """Turns on JAX's persistent compilation cache where the config asks for it; returns its folder, or None."""
    if keras.backend.backend() != "jax" or config.compilation_cache is None:
        return None
    import jax

    if config.compilation_cache == "auto":
        if jax.config.jax_compilation_cache_dir:  # JAX_COMPILATION_CACHE_DIR, set by the user
            return Path(jax.config.jax_compilation_cache_dir)
        folder = (Path(config.cache_dir) if config.cache_dir else default_cache_dir()) / FOLDER_NAME
    else:
        folder = Path(config.compilation_cache)
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return folder
