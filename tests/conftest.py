import pytest
import torch

from cartoongan import Discriminator, Generator

TINY = dict(style_dim=32, n_mlp=2, channel_base=512, channel_max=32)


def randomized(module: torch.nn.Module, seed: int = 0, std: float = 0.5):
    """Perturb every parameter so that noise strengths, biases and toRGB weights are all non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return module


@pytest.fixture
def tiny_g():
    def make(size=16, seed=0, **kw):
        torch.manual_seed(seed)
        return randomized(Generator(size, **{**TINY, **kw}), seed).eval()
    return make


@pytest.fixture
def tiny_d():
    def make(size=16, seed=0):
        torch.manual_seed(seed)
        return Discriminator(size, channel_base=512, channel_max=32)
    return make


def _process_switches():
    """Save the process-wide switches training and rendering set (cudnn.benchmark, the TF32 math
    mode), and give back a function that restores them."""
    from cartoongan.device import _math_state, _restore_math_state

    benchmark, math = torch.backends.cudnn.benchmark, _math_state()

    def restore():
        torch.backends.cudnn.benchmark = benchmark
        _restore_math_state(math)
    return restore


@pytest.fixture(autouse=True)
def keep_process_switches():
    """Trainer sets cudnn.benchmark and a math mode, load_generator IEEE fp32, for the whole process:
    each test starts from the same state, or a CUDA test's precision would depend on test order."""
    restore = _process_switches()
    yield
    restore()


@pytest.fixture(autouse=True, scope="module")
def keep_process_switches_per_module():
    """The same for a module's shared fixtures (test_cuda_e2e trains in one): the per-test fixture
    above is set up after them, so it would restore what they left, to the later modules."""
    restore = _process_switches()
    yield
    restore()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda"):  # the marker, not a keyword: a test id "cuda" is no GPU test
            item.add_marker(skip)
