"""Reads PyTorch's legacy `.pth` state dicts with the standard library and numpy: no PyTorch.

The legacy format (`torch.save(..., _use_new_zipfile_serialization=False)`) is a run of pickles
and raw bytes:

    magic number, protocol version, system info        three small pickles
    the state dict                                      a pickle whose tensors refer to storages
                                                        by persistent id
    the storage keys                                    a pickled list
    each storage, in that order                         its element count (8 bytes), its bytes

Unpickling runs whatever a pickle names, so no pickle of the file goes through plain `pickle.load`:
the header pickles and the key list may hold only built-in values (numbers, strings, lists, dicts),
and the state dict only the few classes a state dict of float and integer tensors needs. A file that
names anything else is not a plain state dict, and is not trusted. Every tensor's view is checked
against its storage before it is taken, so a crafted shape, stride or offset cannot read past it.
"""

import collections
import math
import os
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


class _StorageRef(collections.namedtuple("_StorageRef", "dtype key count")):
    """A storage as a tensor names it (by persistent id): its element type, key and element count."""


class _ValuesUnpickler(pickle.Unpickler):
    """Unpickles built-in values only: a header or key list that names any class or object is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a header holds only plain values")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r} outside the state dict")


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
        return _StorageRef(pid[1], str(pid[2]), int(pid[4]))


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
    if _ValuesUnpickler(file).load() != MAGIC_NUMBER:
        raise ValueError("wrong magic number")
    _ValuesUnpickler(file).load()  # protocol version
    system = _ValuesUnpickler(file).load()
    if not isinstance(system, dict) or not system.get("little_endian", False):
        raise ValueError("big-endian files are not supported")
    state = _SafeUnpickler(file).load()
    if not isinstance(state, dict) or not all(_is_tensor(value) for value in state.values()):
        raise ValueError("it does not hold a state dict of tensors")
    keys = _ValuesUnpickler(file).load()
    if not isinstance(keys, list):
        raise ValueError("its storage keys are not a list")
    storages = {}
    file_size = os.fstat(file.fileno()).st_size
    for key in keys:
        dtype, count = _storage_layout(state, key)
        (stored_count,) = struct.unpack("<q", file.read(8))
        size = count * np.dtype(dtype).itemsize
        if stored_count != count or count < 0 or size > file_size - file.tell():
            raise ValueError(f"storage {key} is truncated")
        storages[key] = np.frombuffer(file.read(size), dtype=dtype)
    return {name: _view(storages[ref.storage.key], ref, name) for name, ref in state.items()}


def _is_tensor(value):
    return (
        isinstance(value, _TensorRef)
        and isinstance(value.storage, _StorageRef)
        and value.storage.dtype in STORAGE_DTYPES.values()
        and all(type(number) is int for number in (value.offset, *value.shape, *value.strides))
        and len(value.shape) == len(value.strides)
    )


def _storage_layout(state, key):
    for ref in state.values():
        if ref.storage.key == key:
            return ref.storage.dtype, ref.storage.count
    raise ValueError(f"storage {key} belongs to no tensor")


def _view(storage, ref, name):
    """The tensor's elements, copied out of its storage once its view is known to lie inside it."""
    if ref.offset < 0 or any(size < 0 for size in ref.shape) or any(stride < 0 for stride in ref.strides):
        raise ValueError(f"tensor {name} has a negative offset, size or stride")
    if math.prod(ref.shape) > storage.size:
        raise ValueError(f"tensor {name} has more elements than its storage of {storage.size}")
    if 0 not in ref.shape:
        last = ref.offset + sum((size - 1) * stride for size, stride in zip(ref.shape, ref.strides))
        if last >= storage.size:
            raise ValueError(f"tensor {name} reaches element {last} of a storage of {storage.size}")
    itemsize = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset :], shape=ref.shape, strides=[stride * itemsize for stride in ref.strides]
    )
    return np.array(view)  # a contiguous copy that owns its memory
