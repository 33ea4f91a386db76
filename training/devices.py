"""The device the Keras backend computes on: its kind (cpu, gpu, ...) and its name.

Asked of the backend itself: Keras has no backend-neutral way (`keras.distribution.list_devices`
does not exist under PyTorch), and its device strings ("gpu:0") do not name the hardware, which a
run's environment.json and the throughput benchmark record.
"""

import platform
from pathlib import Path

import keras


def compute_device():
    """The first device the backend computes on, as {"kind": "cpu" | "gpu" | "tpu" | "mps", "name": ...}."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]  # JAX lists accelerators first, the CPU only when there is none
        if device.platform != "cpu":
            return {"kind": device.platform, "name": device.device_kind}
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return {
                "kind": "gpu",
                "name": tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name),
            }
    elif backend == "torch":
        import torch

        # The order in which Keras's PyTorch backend picks its device.
        if torch.cuda.is_available():
            return {"kind": "gpu", "name": torch.cuda.get_device_name(0)}
        if torch.backends.mps.is_available():
            return {"kind": "mps", "name": "Apple MPS"}
    return {"kind": "cpu", "name": cpu_name()}


def cpu_name():
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
