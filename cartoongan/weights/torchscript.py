"""Tensors and plain attributes out of a TorchScript archive, without torch.jit and without its code.

A TorchScript file (`torch.jit.save`) is a zip: `<root>/data.pkl` pickles the module tree, each
module an object of a `__torch__.*` class whose TorchScript source sits beside it in `code/`;
tensors are persistent ids naming raw little-endian storages in `<root>/data/<key>`. This reader
unpickles `data.pkl` with every `__torch__` class mapped to an inert `ScriptModuleState` (class name
and attribute dict, the source never read), storages read as bytes and viewed as tensors, and no
other global than the few list builders TorchScript writes. So it keeps working where
`torch.jit.load` (deprecated since torch 2.9) is gone, and a file cannot run anything while read.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .unpickle import UnsafePickleError, check_extent

# storage classes as TorchScript pickles name them -> the dtype of their raw bytes
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = _STORAGE_DTYPES[name]


class ScriptModuleState:
    """Stands in for one `__torch__.*` object: its class's qualified name and its pickled attributes."""

    class_name = ""

    def __setstate__(self, state) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.class_name}: state is not a dict")
        self.state = state


@dataclass
class ScriptModule:
    """One module of the archive's tree: `class_name` (e.g. 'inceptionv3.Conv2dLayer', the
    `__torch__.` prefix and `___torch_mangle_N` parts dropped), its tensors and other attributes."""

    class_name: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    attrs: dict[str, object] = field(default_factory=dict)


def _rebuild_tensor(flat, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not torch.is_tensor(flat):
        raise UnsafePickleError("tensor rebuilt from something other than a storage")
    offset, size, stride = int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride)
    check_extent(size, stride, offset, flat.numel())
    return flat.as_strided(size, stride, offset).clone()


def _list_of(kind):
    def build(values):
        if not isinstance(values, list) or not all(isinstance(v, kind) for v in values):
            raise pickle.UnpicklingError(f"expected a list of {kind.__name__}")
        return list(values)
    return build


def _restore_type_tag(value, type_str):
    return value


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.jit._pickle", "build_intlist"): _list_of(int),
    ("torch.jit._pickle", "build_doublelist"): _list_of(float),
    ("torch.jit._pickle", "build_boollist"): _list_of(bool),
    ("torch.jit._pickle", "build_tensorlist"): _list_of(torch.Tensor),
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
}


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, fh, archive: zipfile.ZipFile, root: str):
        super().__init__(fh)
        self._archive, self._root = archive, root
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self._classes:  # a fresh class per name: NEWOBJ needs a type
                self._classes[qualified] = type(name, (ScriptModuleState,), {"class_name": qualified})
            return self._classes[qualified]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing global {module}.{name}") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise UnsafePickleError(f"refusing persistent id {str(pid)[:60]}")
        _, kind, key, _location, numel = pid
        try:
            raw = self._archive.read(f"{self._root}/data/{key}")
        except KeyError:
            raise pickle.UnpicklingError(f"storage {key} is missing from the archive") from None
        flat = torch.frombuffer(bytearray(raw), dtype=kind.dtype) if raw else torch.empty(0, dtype=kind.dtype)
        if flat.numel() < int(numel):
            raise pickle.UnpicklingError(f"storage {key} holds {flat.numel()} values, {numel} expected")
        return flat


def _short_name(qualified: str) -> str:
    parts = [p for p in qualified.split(".") if p != "__torch__" and not p.startswith("___torch_mangle")]
    return ".".join(parts)


def _flatten(obj: ScriptModuleState, prefix: str, out: dict[str, ScriptModule], depth: int = 0) -> None:
    if depth > 100:
        raise pickle.UnpicklingError("module tree nested too deeply")
    module = out[prefix] = ScriptModule(_short_name(obj.class_name))
    for key, value in getattr(obj, "state", {}).items():
        if isinstance(value, ScriptModuleState):
            _flatten(value, f"{prefix}.{key}" if prefix else key, out, depth + 1)
        elif torch.is_tensor(value):
            module.tensors[key] = value
        else:
            module.attrs[key] = value


def read_torchscript(path: str | Path) -> dict[str, ScriptModule]:
    """Every module of the TorchScript archive at `path`, by dotted name ('' is the root).

    Raises pickle.UnpicklingError (UnsafePickleError for a refused global), zipfile.BadZipFile or
    ValueError for a file that is not such an archive."""
    with zipfile.ZipFile(path) as archive:
        roots = [n[: -len("/data.pkl")] for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(roots) != 1:
            raise ValueError("not a TorchScript archive (no single <root>/data.pkl)")
        root = roots[0]
        if f"{root}/byteorder" in archive.namelist() and archive.read(f"{root}/byteorder").strip() != b"little":
            raise ValueError("big-endian TorchScript archives are not supported")
        tree = _ArchiveUnpickler(io.BytesIO(archive.read(f"{root}/data.pkl")), archive, root).load()
    if not isinstance(tree, ScriptModuleState):
        raise pickle.UnpicklingError("the archive's root is not a module")
    modules: dict[str, ScriptModule] = {}
    _flatten(tree, "", modules)
    return modules
