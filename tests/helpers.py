"""Small datasets and configs the tests make for themselves."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cartoongan.config import RunConfig, load_recipe


def blob_images(folder: Path, n: int = 12, size: int = 40, seed: int = 0) -> Path:
    """n simple pictures (a coloured disc on a plain background), non-square, as PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:size, :size + 8]
    for i in range(n):
        img = np.empty((size, size + 8, 3), np.uint8)
        img[:] = rng.randint(0, 255, 3)
        cy, cx, r = rng.randint(10, size - 10), rng.randint(10, size - 2), rng.randint(5, 12)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.randint(0, 255, 3)
        Image.fromarray(img).save(folder / f"img{i:03d}.png")
    return folder


# the capabilities that let root read, enter and replace any file whatever its permissions
_OVERRIDES = "-dac_override,-dac_read_search,-fowner"


def cli_where_permissions_bind(args: list[str]) -> subprocess.CompletedProcess:
    """The CLI in a subprocess for which file permissions hold, as for any user: as root (CI's
    containers), with the capabilities that override them dropped through setpriv."""
    import pytest

    command = [sys.executable, "-m", "cartoongan_cli", *map(str, args)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root, without setpriv to drop the permission overrides")
        command = ["setpriv", "--bounding-set", _OVERRIDES, "--inh-caps", _OVERRIDES, *command]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})


def tiny_config(**train) -> RunConfig:
    cfg = load_recipe("tiny")
    cfg.model.size = 16
    cfg.train.log_every = 2
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def invoke_ok(args: list[str]):
    """Run the CLI in-process and require exit code 0 (the output is the failure's message)."""
    from cartoongan_cli.app import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def free_port() -> int:
    """A TCP port nothing listens on now, for a test's own torch.distributed rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_as_rank(rank: int, world: int, port: int) -> None:
    """Make a spawned test process look like torchrun's worker `rank` of `world` on this machine
    (one thread each, so two ranks share CI's two cores)."""
    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def stops_after(n: int, real):
    """`real`, but its call number n + 1 raises KeyboardInterrupt: a user's Ctrl-C part-way through."""
    calls = []

    def wrapped(*args, **kw):
        if len(calls) == n:
            raise KeyboardInterrupt
        calls.append(args)
        return real(*args, **kw)

    return wrapped
