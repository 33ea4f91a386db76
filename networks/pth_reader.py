"""Reads PyTorch's legacy `.pth` state dicts with the standard library and numpy: no PyTorch.

The legacy format (`torch.save(..., _use_new_zipfile_serialization=False)`) is a run of pickles
and raw bytes:

    magic number, protocol version, system info        three small pickles
    the state dict                                      a pickle whose tensors refer to storages
                                                        by persistent id
    the storage keys                                    a pickled list
    each storage, in that order                         its element count (8 bytes), its bytes

Unpickling runs whatever a pickle names, so `_SafeUnpickler` resolves only the few classes a
state dict of float and integer tensors needs and refuses the rest: a file that names anything
else is not a plain state dict, and is not trusted.
"""

import collections
import pickle
import struct

import numpy as np

from common.errors import DataError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
# torch's storage classes in a legacy file, and the numpy dtype of their elements.
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


class _TensorRef:
    """A tensor as the state dict pickle describes it: a view into a storage not yet read."""

    def __init__(self, storage, offset, shape, strides, *_):
        self.storage, self.offset, self.shape, self.strides = storage, offset, tuple(shape), tuple(strides)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles a state dict of tensors, and nothing else."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _TensorRef
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a plain state dict")

    def persistent_load(self, pid):
        # ("storage", dtype, key, device, element count[, view metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return pid[1], str(pid[2]), int(pid[4])


def read_pth(path):
    """The tensors of a legacy-format PyTorch state dict, as numpy arrays.

    Args:
        path: a `.pth` file written by `torch.save(state_dict)` in the legacy format.

    Returns:
        A dict {parameter name: numpy array} in the file's order.

    Raises:
        DataError: the file is not a legacy state dict of tensors, or is truncated.
    """
    try:
        with open(path, "rb") as file:
            return _read(file)
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataError(f"{path}: not a complete PyTorch state dict in the legacy format ({error})") from None


def _read(file):
    if pickle.load(file) != MAGIC_NUMBER:
        raise ValueError("wrong magic number")
    pickle.load(file)  # protocol version
    system = pickle.load(file)
    if not system.get("little_endian", False):
        raise ValueError("big-endian files are not supported")
    state = _SafeUnpickler(file).load()
    if not isinstance(state, dict) or not all(isinstance(value, _TensorRef) for value in state.values()):
        raise ValueError("it does not hold a state dict of tensors")
    storages = {}
    for key in pickle.load(file):
        dtype, count = _storage_layout(state, key)
        (stored_count,) = struct.unpack("<q", file.read(8))
        data = file.read(stored_count * np.dtype(dtype).itemsize)
        if stored_count != count or len(data) != count * np.dtype(dtype).itemsize:
            raise ValueError(f"storage {key} is truncated")
        storages[key] = np.frombuffer(data, dtype=dtype)
    return {name: _view(storages[ref.storage[1]], ref) for name, ref in state.items()}


def _storage_layout(state, key):
    for ref in state.values():
        dtype, storage_key, count = ref.storage
        if storage_key == key:
            return dtype, count
    raise ValueError(f"storage {key} belongs to no tensor")


def _view(storage, ref):
    itemsize = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset:], shape=ref.shape, strides=[stride * itemsize for stride in ref.strides]
    )
    return np.array(view)  # a contiguous copy that owns its memory
