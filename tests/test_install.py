"""Installed as users install it (a wheel, not the editable checkout), run from another folder."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import blob_images

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel of this checkout installed (without dependencies) into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp / "dist"), str(ROOT)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("cartoongan-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp / "site"),
                    str(wheel)], check=True, capture_output=True)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp / "site")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=600)
    return run, elsewhere, tmp / "site"


def test_the_wheel_is_what_runs(installed):
    run, _, site = installed
    res = run("-c", "import cartoongan, cartoongan_cli; print(cartoongan.__file__); print(cartoongan_cli.__file__)")
    assert res.returncode == 0, res.stderr
    assert all(line.startswith(str(site)) for line in res.stdout.split()), res.stdout


def test_recipes_by_name_from_the_wheel(installed):
    run, elsewhere, _ = installed
    res = run("-c", "from cartoongan.config import load_recipe, recipe_names; "
                    "print(load_recipe('paper_structure_loss').finetune.struct_loss, len(recipe_names()))")
    assert res.returncode == 0, res.stderr
    struct, n = res.stdout.split()
    assert int(struct) > 0 and int(n) == len(list((ROOT / "recipes").glob("*.toml")))
    data = blob_images(elsewhere / "data", n=4)
    res = run("-m", "cartoongan_cli", "pretrain", "--recipe", "tiny", "--data", str(data), "--out", "run",
              "--iters", "1")
    assert res.returncode == 0, res.stderr[-1500:]
    assert (elsewhere / "run" / "latest.pt").is_file()


def test_demo_from_the_wheel(installed):
    """The demo's pipeline (synthetic cartoons, fine-tune from the bundled source the wheel ships, swap,
    pictures) at a test's size: 8 cartoons, 1 step, 2 seeds."""
    run, elsewhere, site = installed
    res = run("-c", "from cartoongan.pipelines.demo import BUNDLED_SOURCE, run_demo; "
                    "r = run_demo('demo', finetune_iters=1, n_cartoon=8, seeds=[0, 1]); print(BUNDLED_SOURCE, r.source)")
    assert res.returncode == 0, res.stderr[-1500:]
    bundled, used = res.stdout.split()
    assert bundled == used and bundled.startswith(str(site))
    assert (elsewhere / "demo" / "compare.png").is_file() and (elsewhere / "demo" / "interpolation.gif").is_file()
