"""Read a PyTorch state dict (``.pth``) into numpy arrays without importing torch.

A ``.pth`` file is a pickle, and unpickling can call any function the file
names: ``torch.load`` of an untrusted file can run code. This reader never
imports torch (the project does not depend on it) and unpickles with an
allowlist: the few globals a state dict of tensors needs (:data:`ALLOWED_GLOBALS`)
resolve to inert stand-ins, and any other global is refused in ``find_class``,
before anything is called. A weights file therefore cannot run code here.

Both formats ``torch.save`` writes are read:

- legacy (torch < 1.6, or ``_use_new_zipfile_serialization=False``): pickles of
  the magic number, the protocol version, the sys info and the state dict, a
  pickle of the storage keys, then per key an int64 element count and the raw
  storage bytes;
- zip (torch >= 1.6): ``<archive>/data.pkl`` and the storages in ``<archive>/data/<key>``.

A TorchScript archive (``torch.jit.save``) has the same zip layout, but its
``data.pkl`` pickles the module tree: classes named ``__torch__.*`` built with
``NEWOBJ`` and filled with ``BUILD``. :func:`load_torchscript` reads them as
inert :class:`Module` records (a class name and a dict) and returns the tensors
keyed by their dotted path; nothing named in the file is imported, and the
archive's ``code/`` is never read.

:func:`load_numpy_pickle` reads a plain pickle of dicts of numpy arrays (a Flax
checkpoint, say) allowing exactly numpy's array-reconstruction globals.

Tensors are views of storages (an offset, a size and a stride); each becomes a
contiguous numpy array in native byte order.
"""

from __future__ import annotations

import collections
import functools
import io
import math
import os
import pickle
import struct
import zipfile
from typing import NamedTuple

import numpy as np

from ..errors import WeightsError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
ZIP_MAGIC = b"PK\x03\x04"


class _StorageType(NamedTuple):
    """Stand-in for ``torch.FloatStorage`` etc.: only the numpy dtype code (no byte order)."""
    dtype: str


class _Storage(NamedTuple):
    """Stand-in for a storage named by a persistent id; its bytes are read after the pickle."""
    key: str
    dtype: str
    view_offset: int = 0
    view_size: int | None = None


class _Tensor(NamedTuple):
    """Stand-in for a tensor: a strided view of a storage, made an array once the storages are read."""
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """Stand-in for ``torch._utils._rebuild_tensor(_v2)``; requires_grad and hooks are dropped."""
    return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


_STORAGE_DTYPES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "LongStorage": "i8",
                   "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
                   "BoolStorage": "b1"}
_GLOBALS = {"collections.OrderedDict": collections.OrderedDict,
            "torch._utils._rebuild_tensor": _rebuild_tensor,
            "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
            **{f"torch.{name}": _StorageType(code) for name, code in _STORAGE_DTYPES.items()}}
ALLOWED_GLOBALS = frozenset(_GLOBALS)
"""The only ``module.name`` globals a weights file may name; everything else is refused."""
#: TorchScript also names its module classes (made inert :class:`Module` records) and an int-list helper
TORCHSCRIPT_PREFIX = "__torch__."
_TORCHSCRIPT_GLOBALS = {**_GLOBALS, "torch.jit._pickle.build_intlist": list}


class Module:
    """Inert stand-in for a TorchScript module: its class name and the attributes ``BUILD`` gave it.

    ``NEWOBJ`` calls ``cls.__new__(cls)`` only (no ``__init__``), and ``BUILD``
    calls :meth:`__setstate__`, which just keeps the dict.
    """

    torch_class = "Module"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.torch_class}: module state is a {type(state).__name__}, not a dict")
        self.state = state


def _module_class(full: str) -> type:
    """One :class:`Module` subclass per TorchScript class name, made here: nothing of the file is imported."""
    if full not in _MODULE_CLASSES:
        _MODULE_CLASSES[full] = type(full.rsplit(".", 1)[-1], (Module,), {"torch_class": full})
    return _MODULE_CLASSES[full]


_MODULE_CLASSES: dict[str, type] = {}


def _not_torch(path):
    return WeightsError(f"{path}: not a PyTorch weights file (a .pth state dict saved by torch.save); "
                        "check the path, or save model.state_dict() with torch.save.")


def _corrupt(path, detail):
    return WeightsError(f"{path}: the weights file is truncated or corrupt ({detail}); download or reinstall it.")


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`, to stand-ins; records each storage's dtype by key.

    With ``torchscript``, also the int-list helper and ``__torch__.*`` class
    names, as :class:`Module` records.
    """

    def __init__(self, file, path, storage_dtypes, torchscript=False):
        super().__init__(file, encoding="utf-8")
        self.path, self.storage_dtypes, self.torchscript = path, storage_dtypes, torchscript

    def find_class(self, module, name):
        full = f"{module}.{name}"
        if full in (_TORCHSCRIPT_GLOBALS if self.torchscript else _GLOBALS):
            return _TORCHSCRIPT_GLOBALS[full]
        if self.torchscript and full.startswith(TORCHSCRIPT_PREFIX) and full.isprintable():
            return _module_class(full)
        if full == "torch.BFloat16Storage":
            raise WeightsError(f"{self.path}: holds bfloat16 tensors, which numpy cannot represent; "
                               "convert the state dict to float32 (tensor.float()) and save it again.")
        raise WeightsError(f"{self.path}: refusing to load: the file's pickle names {full}, which a PyTorch "
                           "state dict never needs; a weights file must not run code.")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        if self.storage_dtypes.setdefault(pid[2], pid[1].dtype) != pid[1].dtype:
            raise pickle.UnpicklingError(f"storage {pid[2]} is named with two types")
        view = pid[5] if len(pid) == 6 else None  # legacy storage view: (view_key, offset, size)
        return _Storage(pid[2], pid[1].dtype) if view is None else _Storage(pid[2], pid[1].dtype, view[1], view[2])


def _unpickle(file, path, storage_dtypes, on_error, torchscript=False):
    """One pickle from ``file``; a refused global propagates, any other failure becomes ``on_error()``."""
    try:
        return _RestrictedUnpickler(file, path, storage_dtypes, torchscript).load()
    except WeightsError:
        raise
    except Exception as error:
        raise on_error(error) from None


def _load_legacy(path, f):
    """Magic, protocol, sys info, state dict, storage keys, then each storage's count and bytes."""
    dtypes = {}
    magic = _unpickle(f, path, dtypes, lambda e: _not_torch(path))
    if type(magic) is not int or magic != MAGIC_NUMBER:
        raise _not_torch(path)
    corrupt = lambda e: _corrupt(path, f"{type(e).__name__}: {e}")  # noqa: E731
    if _unpickle(f, path, dtypes, corrupt) != PROTOCOL_VERSION:
        raise _corrupt(path, "unknown torch serialization protocol")
    sys_info = _unpickle(f, path, dtypes, corrupt)
    order = "<" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else ">"
    state = _unpickle(f, path, dtypes, corrupt)
    keys = _unpickle(f, path, dtypes, corrupt)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or set(keys) != set(dtypes):
        raise _corrupt(path, "the storage keys do not match the tensors")
    size, storages = os.fstat(f.fileno()).st_size, {}
    for key in keys:
        head = f.read(8)
        count = struct.unpack(order + "q", head)[0] if len(head) == 8 else -1
        dtype = np.dtype(order + dtypes[key])
        if count < 0 or count * dtype.itemsize > size - f.tell():
            raise _corrupt(path, f"storage {key} is shorter than announced")
        storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype)
    return state, storages


def _load_zip(path, torchscript=False):
    """``<archive>/data.pkl`` with the storages in ``<archive>/data/<key>`` (torch >= 1.6, and TorchScript)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if os.path.basename(n) == "data.pkl" and n.count("/") <= 1]
            if len(pickles) != 1:
                raise _not_torch(path)
            prefix, dtypes = pickles[0][:-len("data.pkl")], {}
            read = functools.partial(_read_entry, archive, path)
            order = read(prefix + "byteorder") if prefix + "byteorder" in names else b"little"
            order = ">" if order.strip() == b"big" else "<"
            data = io.BytesIO(read(pickles[0]))
            state = _unpickle(data, path, dtypes, lambda e: _corrupt(path, f"{type(e).__name__}: {e}"), torchscript)
            storages = {key: read(f"{prefix}data/{key}") for key in dtypes}
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, ValueError) as error:
        raise _corrupt(path, f"{type(error).__name__}: {error}") from None
    return state, {key: np.frombuffer(raw, order + dtypes[key], len(raw) // np.dtype(dtypes[key]).itemsize)
                   for key, raw in storages.items()}


def _read_entry(archive: zipfile.ZipFile, path: str, name: str) -> bytes:
    """One entry's bytes. torch.save stores them uncompressed: one that would unpack to more than the whole file
    is a zip bomb, refused before it fills the memory."""
    if archive.getinfo(name).file_size > os.path.getsize(path):
        raise _corrupt(path, f"its entry {name} would unpack to more bytes than the file holds")
    return archive.read(name)


def _to_array(path, name, tensor, storages):
    """The tensor's strided view of its storage, copied to a contiguous native-order array."""
    st = tensor.storage
    if not isinstance(st, _Storage) or len(tensor.size) != len(tensor.stride) or any(
            type(i) is not int or i < 0 for i in (tensor.offset, st.view_offset, st.view_size or 0, *tensor.size,
                                                  *tensor.stride)):
        raise _corrupt(path, f"tensor {name} has an invalid layout")
    base = storages[st.key][st.view_offset:]
    base = base if st.view_size is None else base[:st.view_size]
    native = base.dtype.newbyteorder("=")
    if 0 in tensor.size:
        return np.zeros(tensor.size, native)
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
    if last >= base.size:
        raise _corrupt(path, f"tensor {name} reaches past the end of its storage")
    if math.prod(tensor.size) > base.size:  # repeated values (stride 0): the copy could exceed any memory
        raise _corrupt(path, f"tensor {name} declares {math.prod(tensor.size)} values, more than its storage holds")
    strides = [s * base.itemsize if n > 1 else 0 for n, s in zip(tensor.size, tensor.stride)]
    view = np.lib.stride_tricks.as_strided(base[tensor.offset:], tensor.size, strides, writeable=False)
    return np.array(view, dtype=native, order="C")


def _is_tensor_dict(obj):
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, _Tensor) for k, v in obj.items())


def _state_dict(path, obj):
    """The dict of tensors: the top-level object, or a checkpoint's only ``state_dict``/``model`` entry."""
    if _is_tensor_dict(obj):
        return obj
    inner = [obj[k] for k in ("state_dict", "model") if isinstance(obj, dict) and _is_tensor_dict(obj.get(k))]
    if len(inner) == 1:
        return inner[0]
    what = f"a dict with keys {list(obj)[:6]!r:.120}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
    raise WeightsError(f"{path}: holds {what}, not a state dict of tensors; save model.state_dict() "
                       "(not the whole model) with torch.save.")


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of the ``.pth`` file at ``path`` as numpy arrays, keyed and ordered as in the file.

    No torch import and no code from the file can run (see the module docstring).
    Raises :class:`WeightsError` naming ``path`` when the file is missing, is not a
    PyTorch state dict, is truncated or corrupt, or names a global outside :data:`ALLOWED_GLOBALS`.
    """
    path = os.fspath(path)

    def read(f):
        is_zip = f.read(4) == ZIP_MAGIC
        f.seek(0)
        return _load_zip(path) if is_zip else _load_legacy(path, f)

    state, storages = _read(path, read)
    return _arrays(path, _state_dict(path, state), storages)


def load_torchscript(path: str) -> dict[str, np.ndarray]:
    """The tensors of a TorchScript archive (``torch.jit.save``), keyed by their dotted path in the module tree.

    The module classes become :class:`Module` records; the archive's code is
    never read. Same errors as :func:`load_state_dict`.
    """
    path = os.fspath(path)

    def read(f):
        if f.read(4) != ZIP_MAGIC:
            raise WeightsError(f"{path}: not a TorchScript archive (a zip file written by torch.jit.save).")
        return _load_zip(path, torchscript=True)

    tree, storages = _read(path, read)
    if not isinstance(tree, Module):
        raise WeightsError(f"{path}: holds a {type(tree).__name__}, not a TorchScript module.")
    return _arrays(path, dict(_module_tensors(path, tree, "")), storages)


def _module_tensors(path, module, prefix):
    """(dotted name, tensor) of every tensor under ``module``, depth first in attribute order."""
    state = getattr(module, "state", None)
    if not isinstance(state, dict):
        raise _corrupt(path, f"module {prefix or 'root'} ({module.torch_class}) has no attributes")
    for key, value in state.items():
        if isinstance(value, _Tensor):
            yield prefix + str(key), value
        elif isinstance(value, Module):
            yield from _module_tensors(path, value, f"{prefix}{key}.")


def _read(path, read):
    """``read(file)`` of the file at ``path``, with a missing or unreadable file made one clear error."""
    try:
        with open(path, "rb") as f:
            return read(f)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise WeightsError(f"{path}: weights file not found; check the path or reinstall the package "
                           "that provides it.") from None
    except OSError as error:
        raise WeightsError(f"{path}: cannot read the weights file ({error.strerror or error}).") from None


def _arrays(path, state, storages):
    try:
        return {name: _to_array(path, name, tensor, storages) for name, tensor in state.items()}
    except (KeyError, ValueError, OverflowError, TypeError, AttributeError) as error:
        raise _corrupt(path, f"{type(error).__name__}: {error}") from None


#: the function ``ndarray.__reduce__`` names (``numpy.core.multiarray._reconstruct``; ``numpy._core`` in numpy 2)
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_NUMPY_GLOBALS = {"numpy.core.multiarray._reconstruct": _RECONSTRUCT,
                  "numpy._core.multiarray._reconstruct": _RECONSTRUCT,
                  "numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
NUMPY_ALLOWED_GLOBALS = frozenset(_NUMPY_GLOBALS)
"""The only globals :func:`load_numpy_pickle` resolves: what pickling an ndarray writes."""


class _NumpyUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        full = f"{module}.{name}"
        if full in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[full]
        raise WeightsError(f"{self.path}: refusing to load: the file's pickle names {full}, which a pickle of "
                           "numpy arrays never needs; a weights file must not run code.")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("a pickle of numpy arrays has no persistent ids")


def load_numpy_pickle(path: str) -> dict[str, np.ndarray]:
    """The arrays of a pickle of nested dicts of numpy arrays, keyed by their ``/``-joined dict path.

    Only :data:`NUMPY_ALLOWED_GLOBALS` resolve; any other global is refused
    before it is called. Arrays of Python objects are refused too.
    """
    path = os.fspath(path)

    def read(f):
        try:
            return _NumpyUnpickler(f, path).load()
        except WeightsError:
            raise
        except Exception as error:
            raise _corrupt(path, f"{type(error).__name__}: {error}") from None

    return dict(_flatten(path, _read(path, read), ""))


def _flatten(path, tree, prefix):
    if not isinstance(tree, dict) or not tree:
        raise WeightsError(f"{path}: holds a {type(tree).__name__} at {prefix or 'the top'!r}, "
                           "not a nested dict of numpy arrays.")
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise WeightsError(f"{path}: array {name!r} has dtype {value.dtype}, not numbers.")
            yield name, value
        else:
            yield from _flatten(path, value, name + "/")
