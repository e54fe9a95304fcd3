import subprocess
import sys

import pytest
import torch

from cartoongan.config import load_recipe
from cartoongan.errors import ConfigError
from cartoongan.train import memory
from cartoongan.hostmem import _cgroup_room
from cartoongan.train.memory import bytes_per_image, check_batch_fits

TINY = load_recipe("tiny").model  # the network the PEAK_RSS step trains

# one CPU training step of the tiny recipe (R1 and path length fall on step 0), then the peak RSS
# of this process's own memory: VmHWM, as ru_maxrss keeps the parent's size from before the exec
PEAK_RSS = """
import runpy, sys
sys.argv = ["cartoongan", "pretrain", "--recipe", "tiny", "--data", sys.argv[1], "--out", sys.argv[2],
            "--iters", "1", "--batch", sys.argv[3], "--augment-p", "0.5", "--eval-every", "0"]
try:
    runpy.run_module("cartoongan_cli", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
with open("/proc/self/status") as fh:
    print(next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:")))
"""


def _peak_rss(data, out, batch: int) -> int:
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(data), str(out), str(batch)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_estimate_is_below_what_a_training_step_takes(tmp_path):
    """The check must never refuse a batch that fits: each image added to the batch costs more than
    the estimate says (peak RSS of one real step, batches 2 and 34)."""
    from cartoongan.data.synthetic import synthesize

    synthesize("photo", 8, 32, tmp_path / "d")
    small, large = (_peak_rss(tmp_path / "d", tmp_path / f"r{b}", b) for b in (2, 34))
    per_image = (large - small) / 32
    assert per_image > bytes_per_image(TINY), (per_image, bytes_per_image(TINY))


def test_a_batch_past_free_memory_names_the_batch_that_fits(monkeypatch):
    monkeypatch.setattr(memory, "host_memory_available", lambda: 10 * bytes_per_image(TINY) + 5)
    check_batch_fits(TINY, 10, torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"^--batch 11 needs over .* at 32 px on the CPU .*: use --batch 10 or less$"):
        check_batch_fits(TINY, 11, torch.device("cpu"))
    monkeypatch.setattr(memory, "host_memory_available", lambda: bytes_per_image(TINY) - 1)
    with pytest.raises(ConfigError, match="even --batch 1 does not fit"):
        check_batch_fits(TINY, 1, torch.device("cpu"))


def test_no_check_on_cuda_or_where_memory_is_unknown(monkeypatch):
    monkeypatch.setattr(memory, "host_memory_available", lambda: 0)
    check_batch_fits(TINY, 10**6, torch.device("cuda"))  # a CUDA allocation that fails raises: reported then
    monkeypatch.setattr(memory, "host_memory_available", lambda: None)
    check_batch_fits(TINY, 10**6, torch.device("cpu"))


def test_cgroup_limits_v2_and_v1(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("1000\n")
    (v2 / "memory.current").write_text("700\n")
    (v2 / "memory.stat").write_text("anon 500\ninactive_file 100\n")
    assert _cgroup_room(v2) == 400  # reclaimable page cache counts as room
    (v2 / "memory.max").write_text("max\n")
    assert _cgroup_room(v2) is None

    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{2**63 - 4096}\n")  # v1's "no limit"
    (v1 / "memory.usage_in_bytes").write_text("10\n")
    assert _cgroup_room(v1.parent) is None
    (v1 / "memory.limit_in_bytes").write_text("50\n")
    (v1 / "memory.usage_in_bytes").write_text("80\n")
    assert _cgroup_room(v1.parent) == 0
    assert _cgroup_room(tmp_path / "none") is None
