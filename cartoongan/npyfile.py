"""A .npy file's bytes checked before NumPy reads them: what np.load says of a damaged file misleads.

An empty file surfaces as EOFError (which click turns into a bare "aborted"), a .npz as an object with
no shape, a truncated array as a reshape error, and a header that claims a huge shape as an
allocation the machine cannot make. Reading the header alone says which, in one line.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError
from .filekind import not_found, special_kind

def _read_header(fh) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of the .npy at `fh`, which is left at the first data byte."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    elif version == (3, 0):  # utf-8 field names; numpy has no public reader of it
        shape, _, dtype = np.lib.format._read_array_header(fh, version)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    return shape, dtype


def check_npy_file(path: str | os.PathLike, what: str = ".npy file",
                   error: type[Exception] = DataError) -> tuple[tuple, np.dtype, int]:
    """Raise `error` (one line; `what` names the file when it is missing) unless `path` is a .npy
    whose data are all there; else its (shape, dtype, offset of the data). Object arrays (pickled
    dicts) are only checked for their header: their size is not in it."""
    path = Path(path)
    if not path.exists():
        raise error(not_found(what, path))
    if path.is_dir():
        raise error(f"{path} is a folder, not a .npy file")
    if kind := special_kind(path):
        raise error(f"{path} is {kind}, not a .npy file")
    size = path.stat().st_size
    if size == 0:
        raise error(f"{path} is empty (0 bytes): an interrupted save or copy? Make or copy it again")
    if zipfile.is_zipfile(path):
        raise error(f"{path} is a NumPy .npz archive, not a .npy array: save the one array with np.save")
    with open(path, "rb") as fh:
        try:
            shape, dtype = _read_header(fh)
        except (ValueError, OSError, EOFError) as exc:
            raise error(f"{path} is not a readable .npy file ({str(exc).splitlines()[0][:100]})") from None
        start = fh.tell()
    need = 0 if dtype.hasobject else int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if size - start < need:
        raise error(f"{path} is truncated or damaged: its header says {dtype} {tuple(shape)} ({need:,} bytes) "
                    f"and the file holds {size - start:,}; save or copy it again")
    return shape, dtype, start
