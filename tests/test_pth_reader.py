"""The `.pth` reader against hostile files: no pickle of the file runs code, and no tensor view reads
outside its storage. The files are written here in PyTorch's legacy layout, without PyTorch."""

import collections
import pickle
import struct
import subprocess
import sys
import types

import numpy as np
import pytest
from conftest import REPO_ROOT

from common.errors import DataError
from networks.pth_reader import MAGIC_NUMBER, read_pth

HEADER = (MAGIC_NUMBER, 1001, {"little_endian": True, "type_sizes": {"int": 4, "long": 4}})


def _rebuild_tensor_v2(*args):
    raise AssertionError("only pickled by reference, never called")


class FloatStorage:
    """Stands in for torch.FloatStorage, so that pickle writes the name `torch.FloatStorage`."""


class _Tensor:
    """A tensor view into a storage, pickled as torch pickles one."""

    def __init__(self, key, count, offset, shape, strides):
        self.key, self.count, self.args = key, count, (offset, shape, strides)

    def __reduce__(self):
        offset, shape, strides = self.args
        return _rebuild_tensor_v2, (
            _StorageId(self.key, self.count),
            offset,
            shape,
            strides,
            False,
            collections.OrderedDict(),
        )


class _StorageId:
    def __init__(self, key, count):
        self.key, self.count = key, count


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageId):
            return ("storage", FloatStorage, obj.key, "cpu", obj.count, None)
        return None


@pytest.fixture
def fake_torch(monkeypatch):
    """Modules named torch and torch._utils, so that the pickles name the real file's classes."""
    torch = types.ModuleType("torch")
    torch_utils = types.ModuleType("torch._utils")
    torch.FloatStorage, torch_utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    FloatStorage.__module__, _rebuild_tensor_v2.__module__ = "torch", "torch._utils"
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", torch_utils)


def write_pth(path, storage, tensors, *, header=HEADER, keys=None, payload_at=None, payload=None):
    """A legacy `.pth` file with one float32 storage (key "0") and `tensors` {name: (offset, shape, strides)}.

    `payload_at` names a pickle (0, 1, 2: the header ones; "keys": the key list) to replace by `payload`.
    """
    pickles = [pickle.dumps(value) for value in header]
    state = collections.OrderedDict((name, _Tensor("0", storage.size, *view)) for name, view in tensors.items())
    with open(path, "wb") as file:
        for index, data in enumerate(pickles):
            file.write(payload if payload_at == index else data)
        _TorchPickler(file).dump(state)
        file.write(payload if payload_at == "keys" else pickle.dumps(keys or ["0"]))
        file.write(struct.pack("<q", storage.size))
        file.write(storage.astype("<f4").tobytes())
    return path


def touch_payload(target):
    """A pickle that, loaded by plain `pickle.load`, runs `touch target`."""

    class Exploit:
        def __reduce__(self):
            return subprocess.call, (["touch", str(target)],)

    return pickle.dumps(Exploit())


def test_a_written_state_dict_reads_back(tmp_path, fake_torch):
    storage = np.arange(10, dtype=np.float32)
    path = write_pth(
        tmp_path / "ok.pth", storage, {"w": (0, (2, 3), (3, 1)), "b": (6, (4,), (1,)), "t": (0, (3, 2), (1, 3))}
    )
    state = read_pth(path)
    np.testing.assert_array_equal(state["w"], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(state["b"], [6, 7, 8, 9])
    np.testing.assert_array_equal(state["t"], [[0, 3], [1, 4], [2, 5]])  # the transposed view


@pytest.mark.parametrize("position", [0, 1, 2, "keys"])
def test_no_pickle_of_the_file_runs_code(tmp_path, fake_torch, position):
    marker = tmp_path / "PWNED"
    payload = touch_payload(marker)
    path = write_pth(
        tmp_path / "evil.pth", np.zeros(4, np.float32), {"w": (0, (4,), (1,))}, payload_at=position, payload=payload
    )
    with pytest.raises(DataError, match="refusing to load"):
        read_pth(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "view, reason",
    [
        ((0, (5,), (1,)), "more elements than its storage"),
        ((0, (2, 2), (4, 1)), "reaches element 5"),
        ((3, (2,), (1,)), "reaches element 4"),
        ((3, (2,), (-1,)), "negative"),
        ((-1, (2,), (1,)), "negative"),
        ((0, (2,), (1, 1)), "not hold a state dict of tensors"),
    ],
)
def test_a_view_outside_its_storage_is_refused(tmp_path, fake_torch, view, reason):
    path = write_pth(tmp_path / "crafted.pth", np.zeros(4, np.float32), {"w": view})
    with pytest.raises(DataError, match=reason):
        read_pth(path)


def test_a_crafted_view_fails_in_one_line_not_a_crash(tmp_path, fake_torch):
    """Before the check, as_strided read outside the buffer: the interpreter died with no message."""
    path = write_pth(tmp_path / "crafted.pth", np.zeros(4, np.float32), {"w": (0, (1 << 20,), (1 << 20,))})
    code = f"from networks.pth_reader import read_pth\nread_pth({str(path)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 1 and "DataError" in result.stderr and "storage" in result.stderr


def test_a_storage_count_beyond_the_file_is_refused_before_reading(tmp_path, fake_torch):
    path = write_pth(tmp_path / "huge.pth", np.zeros(4, np.float32), {"w": (0, (4,), (1,))})
    data = bytearray(path.read_bytes())
    count_at = len(data) - 4 * 4 - 8
    data[count_at : count_at + 8] = struct.pack("<q", 1 << 60)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="truncated"):
        read_pth(path)
