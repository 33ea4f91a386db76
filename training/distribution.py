"""One run on several accelerators: Keras's data parallelism under JAX, on one host or several.

    devices: auto    # (config) every GPU or TPU that JAX sees; on a CPU, one device
    devices: 2       # the first two devices
    devices: 1       # one device, even where there are more

`training_devices(config)` is the scope a run trains in: with more than one device it sets
`keras.distribution.DataParallel`, so the model's variables are replicated on every device and
each batch is split between them along its first axis; the gradients are summed over the devices
by XLA. The config's `batch_size` is the global batch, so the learning rate, each epoch's sampling
and the resume are those of a one-device run, and a run may resume on another number of devices.
Outside the scope (evaluation, prediction) the model runs on one device.

Several hosts: every host runs the same command with Keras's variables
`KERAS_DISTRIBUTION_JOB_ADDRESSES` (the first host's address:port), `KERAS_DISTRIBUTION_NUM_PROCESSES`
and `KERAS_DISTRIBUTION_PROCESS_ID`; main.py calls `initialize_hosts()` before JAX starts, which
calls `keras.distribution.initialize`. Every process then makes the same global batch from the
same seed and gives its own devices their share of it (`_split_batches_evenly_or_replicate`).
Process 0 writes the run folder; the others compute the same run in a private folder of their
own (`other_process_folder`), deleted when they end, and so evaluate it alike.
"""

import atexit
import contextlib
import functools
import os
import shutil
import tempfile

import keras

from common.errors import ConfigError, UserError

AUTO = "auto"
# Keras's own variables for several hosts (`keras.distribution.initialize` reads them).
PROCESSES_VARIABLE = "KERAS_DISTRIBUTION_NUM_PROCESSES"


def initialize_hosts():
    """Joins the processes of a multi-host run, where `KERAS_DISTRIBUTION_NUM_PROCESSES` asks for
    more than one; must come before anything asks JAX for its devices.

    Raises:
        UserError: the variable is not a number, or the backend is not JAX.
    """
    processes = os.environ.get(PROCESSES_VARIABLE, "1")
    if not processes.isdigit():
        raise UserError(f"{PROCESSES_VARIABLE}={processes!r}: expected the number of processes (hosts) of the run")
    if int(processes) <= 1:
        return
    if keras.backend.backend() != "jax":
        raise UserError(f"{PROCESSES_VARIABLE}={processes}: training over several hosts needs KERAS_BACKEND=jax")
    import jax

    # Cross-process collectives on CPU devices (tests, CPU clusters) need gloo; GPUs use NCCL.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        keras.distribution.initialize()
    except (ValueError, RuntimeError) as error:
        raise UserError(
            f"the {processes} processes of the run could not join ({str(error).splitlines()[0]}); every host needs "
            "KERAS_DISTRIBUTION_JOB_ADDRESSES (the first host's address:port), KERAS_DISTRIBUTION_NUM_PROCESSES and its "
            "own KERAS_DISTRIBUTION_PROCESS_ID (docs/scale-out.md)"
        ) from None


def other_process_folder():
    """None in process 0 of a multi-host run, or of any other run; in the other processes, a new
    private folder to write the run into instead of the shared output folder, deleted at exit."""
    if keras.backend.backend() != "jax" or int(os.environ.get(PROCESSES_VARIABLE, "1")) <= 1:
        return None
    import jax

    if jax.process_index() == 0:
        return None
    folder = tempfile.mkdtemp(prefix=f"process-{jax.process_index()}-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def resolve_devices(setting):
    """The devices `setting` ("auto" or a count) names, as Keras's device strings ("gpu:0", ...).

    Raises:
        ConfigError: more devices than there are, or several devices under another backend than JAX.
    """
    if keras.backend.backend() != "jax":
        if setting in (AUTO, 1):
            return []
        raise ConfigError(
            f"devices: {setting} needs KERAS_BACKEND=jax (Keras's data parallelism is JAX's); use devices: auto or 1"
        )
    import jax

    available = keras.distribution.list_devices()
    if setting == AUTO:
        # A CPU's cores already share every step; several CPU "devices" only exist when forced.
        several = jax.devices()[0].platform != "cpu" or jax.process_count() > 1
        return available if several else available[:1]
    if setting > len(available):
        raise ConfigError(
            f"devices: {setting}, but JAX sees {len(available)} ({', '.join(available)}); pass at most {len(available)}, or auto"
        )
    if jax.process_count() > 1 and setting != len(available):
        raise ConfigError(
            f"devices: {setting}: a run over {jax.process_count()} hosts uses all their {len(available)} devices (devices: auto)"
        )
    return available[:setting]


@contextlib.contextmanager
def training_devices(config):
    """The scope a run builds and trains its model in: data-parallel over the config's devices
    where there are several, else one device as always.

    Raises:
        ConfigError: see `resolve_devices`; or a batch size that the devices cannot share evenly.
    """
    devices = resolve_devices(config.devices)
    if len(devices) <= 1:
        yield devices
        return
    if config.batch_size % len(devices):
        raise ConfigError(
            f"batch_size {config.batch_size} cannot be split evenly over {len(devices)} devices: "
            f"the batch is the global batch, so pick a multiple of {len(devices)}"
        )
    _split_batches_evenly_or_replicate()
    distribution = keras.distribution.DataParallel(devices=devices)
    # Every process makes the whole global batch from the seed and keeps its share
    # (`_split_batches_evenly_or_replicate`): Keras must not shard the data set a second time.
    distribution.auto_shard_dataset = False
    with distribution.scope():
        yield devices


def describe_devices():
    """What a run computes on now, for its environment.json: the devices, their kind and the processes."""
    distribution = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    if distribution is None:
        return {"count": 1, "processes": 1}
    import jax

    devices = list(distribution.device_mesh.devices.flat)
    return {
        "count": len(devices),
        "processes": jax.process_count(),
        "names": devices,
        "kind": jax.devices()[0].device_kind,
    }


@functools.cache
def _split_batches_evenly_or_replicate():
    """Lets Keras's JAX trainer take any batch under data parallelism.

    Keras places each batch with `distribute_data_input`, which splits it along its first axis and
    fails where the devices cannot share it evenly: the last batch of an epoch or of a subset that
    the batch size does not divide (the training epoch of 3,213 images in batches of 32). Such a
    batch goes to every device whole instead: each computes the same step on it, which is what
    one device would have computed. Under several hosts, every process made the whole global
    batch, and keeps its share of it (or all of it, for an uneven batch).
    """
    import jax
    from keras.src.backend.jax import distribution_lib

    split = distribution_lib.distribute_data_input

    @functools.wraps(split)
    def distribute_batch(global_batch, layout, batch_dim_name):
        sharding = getattr(layout, "backend_layout", layout)
        if global_batch.shape[0] % sharding.mesh.shape[batch_dim_name]:
            whole = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
            return jax.make_array_from_process_local_data(whole, global_batch)
        share = global_batch.shape[0] // jax.process_count()
        start = jax.process_index() * share
        return split(global_batch[start : start + share], layout, batch_dim_name)

    distribution_lib.distribute_data_input = distribute_batch
