"""The Triton FIR kernel (ops/fir_triton.py) against the depthwise-convolution reference.

Where Triton is installed (the CUDA wheels of torch that `make install` puts in the venv bring it,
so CI has it), the kernel runs in Triton's CPU interpreter and is compiled for sm_90 without a GPU;
on a GPU it runs natively. With a CPU-only torch these skip, except the backend switch and the
machine checks, which fake what they need.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from cartoongan.device import set_math_mode
from cartoongan.ops import fir

GEOMETRIES = [(False, 1, 1, (0, 0)), (False, 1, 2, (0, 0)), (False, 2, 1, (0, 0)), (False, 2, 0, (0, 0)),
              (True, 2, 1, (0, 0)), (True, 2, 1, (1, 0)), (True, 2, 2, (1, 1)), (True, 1, 1, (0, 0))]


def test_backend_switch_is_checked_and_restored():
    with pytest.raises(ValueError, match="FIR backend"):
        with fir.fir_backend("cudnn"):
            pass
    before = fir._backend
    with fir.fir_backend("triton"):
        assert fir._backend == "triton"
        x = torch.randn(1, 2, 6, 6)  # a CPU tensor always takes the reference path
        assert torch.equal(fir.blur(x, fir.make_kernel(), (1, 1)), fir._Geometry(False, 1, 1).apply(x, fir.make_kernel()))
    assert fir._backend == before


def test_the_triton_kernel_takes_only_batches_its_int32_pixel_index_can_count(monkeypatch):
    """Past 2**28 input pixels a (2x upsampled) output's pixel index would overflow int32 in the
    kernel: the reference filters those (meta tensors stand in for the GPU's, with no memory)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with fir.fir_backend("triton"):
        small = torch.empty(4, 8, 256, 256, device="meta").to(memory_format=torch.channels_last)
        large = torch.empty(4096, 8, 256, 256, device="meta").to(memory_format=torch.channels_last)
        assert fir._triton_takes(small) and not fir._triton_takes(large)


@pytest.fixture
def fresh_triton_lookup(monkeypatch):
    """triton_missing() is looked up once per process: clear it around a test that fakes the machine,
    with a stand-in triton module so that the test runs where Triton is not installed too."""
    import types

    monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    for name in ("CC", "TRITON_INTERPRET"):
        monkeypatch.delenv(name, raising=False)
    fir.triton_missing.cache_clear()
    yield
    fir.triton_missing.cache_clear()


def _missing(monkeypatch, which=lambda name: None, headers=True, **env):
    monkeypatch.setattr(fir.shutil, "which", which)
    monkeypatch.setattr(fir.os.path, "exists", lambda path: headers if path.endswith("Python.h") else os.path.lexists(path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fir.triton_missing.cache_clear()
    return fir.triton_missing()


def test_a_gpu_box_without_a_c_compiler_gets_one_line_not_a_launch_failure(monkeypatch, fresh_triton_lookup):
    """Triton compiles a C launcher on its first CUDA launch: without a compiler or Python's
    headers the Triton backend must say so up front (a ConfigError the CLI prints as one line),
    looking where Triton looks."""
    from cartoongan.errors import ConfigError

    found = lambda name: f"/usr/bin/{name}" if name else None  # noqa: E731
    assert "install gcc or set CC" in _missing(monkeypatch)
    with fir.fir_backend("triton"), pytest.raises(ConfigError, match="needs a C compiler"):
        fir._triton_apply()
    assert _missing(monkeypatch, found) is None
    assert _missing(monkeypatch, lambda name: "/usr/bin/clang" if name == "clang" else None) is None
    assert "python3-dev" in _missing(monkeypatch, found, headers=False)
    # Triton takes $CC whenever it is set, even to nothing: so does the check
    assert "CC='' names" in _missing(monkeypatch, found, CC="")
    assert "CC='/opt/no/cc' names" in _missing(monkeypatch, lambda name: None if "/" in name else found(name),
                                               CC="/opt/no/cc")
    monkeypatch.delenv("CC")
    assert _missing(monkeypatch, TRITON_INTERPRET="1") is None  # the interpreter builds nothing


def test_compiled_training_on_such_a_box_is_refused_before_it_starts(monkeypatch, fresh_triton_lookup):
    """torch.compile's CUDA kernels are Triton's too: --compile on a GPU box without a C compiler
    is one line at the start of the run, not an inductor traceback at the first step."""
    from cartoongan.train.runs import check_compile
    from cartoongan.errors import ConfigError

    _missing(monkeypatch)
    with pytest.raises(ConfigError, match="--compile on CUDA needs a C compiler"):
        check_compile(True, torch.device("cuda", 0))
    check_compile(False, torch.device("cuda", 0))  # not compiling: nothing needed
    check_compile(True, torch.device("cpu"))  # the CPU's inductor builds C++, not Triton launchers
    _missing(monkeypatch, lambda name: f"/usr/bin/{name}")
    check_compile(True, torch.device("cuda", 0))


def _interpret(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=600)


def test_interpreted_kernel_matches_the_reference_and_differentiates_twice():
    pytest.importorskip("triton")
    res = _interpret(f"""
        import torch
        from torch.autograd import gradcheck, gradgradcheck
        from cartoongan.ops.fir import _Geometry, blur, fir_backend, make_kernel, upsample2x
        from cartoongan.ops.fir_triton import fir_apply

        torch.manual_seed(0)
        k = make_kernel(gain=4.0)
        for transposed, stride, pad, extra in {GEOMETRIES}:
            g = _Geometry(transposed, stride, pad, extra)
            for nhwc in (False, True):
                x = torch.randn(2, 5, 7, 6)
                x = x.contiguous(memory_format=torch.channels_last) if nhwc else x
                ref, out = g.apply(x, k), fir_apply(x, k, g, block_p=16, block_c=4)
                assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5), (g, nhwc)
                assert out.stride() == ref.contiguous(memory_format=torch.channels_last if nhwc
                                                      else torch.contiguous_format).stride()
            # few channels (the RGB skip path): narrower tiles, default sizes
            x = torch.randn(1, 3, 9, 8).contiguous(memory_format=torch.channels_last)
            assert torch.allclose(fir_apply(x, k, g), g.apply(x, k), atol=1e-5), g
        x = torch.randn(2, 5, 7, 6).to(torch.bfloat16)
        ref = _Geometry(True, 2, 1).apply(x.float(), k)
        assert (fir_apply(x, k, _Geometry(True, 2, 1)).float() - ref).abs().max() < 0.05

        import cartoongan.ops.fir_triton as ft
        calls = []
        real_apply = ft.fir_apply
        ft.fir_apply = lambda *a, **kw: calls.append(a[0].shape) or real_apply(*a, **kw)
        with fir_backend("triton"):
            for fn in (lambda t: blur(t, make_kernel(), (1, 1), 2), lambda t: upsample2x(t, make_kernel(gain=4.0))):
                x = torch.randn(1, 2, 5, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
                x.requires_grad_(True)
                with fir_backend("torch"):
                    ref = fn(x)
                assert torch.allclose(fn(x), ref, atol=1e-12)
                assert gradcheck(fn, (x,), fast_mode=True) and gradgradcheck(fn, (x,), fast_mode=True)
            assert calls, "the NHWC inputs went through the Triton kernel"
            n = len(calls)
            blur(torch.randn(1, 2, 5, 6), make_kernel(), (1, 1))  # NCHW: the reference takes it
            assert len(calls) == n
        import cartoongan.ops.fir as fir
        from cartoongan.errors import ConfigError
        fir._backend = "cudnn"  # as a mistyped CARTOONGAN_FIR would set it
        try:
            blur(torch.randn(1, 2, 5, 6).contiguous(memory_format=torch.channels_last), make_kernel(), (1, 1))
            raise AssertionError("a bad CARTOONGAN_FIR was accepted")
        except ConfigError as exc:
            assert "CARTOONGAN_FIR=cudnn" in str(exc)
        print("ok")
    """)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


def test_kernel_compiles_for_hopper_without_a_gpu():
    """The compiled path is stricter than the interpreter: build sm_90 machine code for every
    variant the models use (no GPU needed to compile)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from cartoongan.ops.fir_triton import _fir_kernel

    ints = ["total", "C", "H", "W", "OH", "OW", "P", "sxb", "sxc", "sxh", "sxw", "syb", "syc", "syh", "syw"]
    for transposed, stride in ((False, 1), (False, 2), (True, 2)):
        for dtype in ("fp32", "bf16", "fp64"):
            signature = {"x_ptr": f"*{dtype}", "w_ptr": "*fp64" if dtype == "fp64" else "*fp32", "y_ptr": f"*{dtype}",
                         **{n: "i32" for n in ints},
                         **{n: "constexpr" for n in ("K", "S", "TRANSPOSED", "F64", "BLOCK_P", "BLOCK_C")}}
            constexprs = {"K": 4, "S": stride, "TRANSPOSED": transposed, "F64": dtype == "fp64", "BLOCK_P": 64, "BLOCK_C": 32}
            compiled = triton.compile(ASTSource(fn=_fir_kernel, signature=signature, constexprs=constexprs),
                                      target=GPUTarget("cuda", 90, 32))
            assert len(compiled.asm["cubin"]) > 0, (transposed, dtype)


@pytest.mark.cuda
def test_cuda_triton_backend_matches_the_reference_through_r1():
    if fir.triton_missing():
        pytest.skip(f"the Triton backend needs {fir.triton_missing()}")
    from torch.autograd import gradcheck, gradgradcheck

    from cartoongan import Discriminator
    from cartoongan.ops.fir_triton import fir_apply
    from cartoongan.train.losses import r1_penalty

    set_math_mode("fp32")  # cuDNN's depthwise reference may otherwise pick a TF32 engine
    torch.manual_seed(0)
    k = fir.make_kernel(gain=4.0).cuda()
    for transposed, stride, pad, extra in GEOMETRIES:
        g = fir._Geometry(transposed, stride, pad, extra)
        for nhwc, shape in ((False, (4, 64, 33, 32)), (True, (4, 64, 33, 32)), (True, (2, 3, 64, 64)),
                            (True, (2, 512, 64, 64))):
            x = torch.randn(shape, device="cuda")
            x = x.contiguous(memory_format=torch.channels_last) if nhwc else x
            assert torch.allclose(fir_apply(x, k, g), g.apply(x, k), atol=1e-5), (g, shape)
    with fir.fir_backend("triton"):
        # NHWC, or the reference would take it (the kernel only takes channels-fast layouts); the
        # derivatives of gradcheck's own NCHW grad-outputs still go to the reference
        x = torch.randn(1, 2, 5, 6, dtype=torch.float64, device="cuda").contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        fn = lambda t: fir.upsample2x(t, k.double())  # noqa: E731
        # the reference's cuDNN transposed convolutions may accumulate in a varying order (as in test_ops)
        assert (gradcheck(fn, (x,), fast_mode=True, nondet_tol=1e-12)
                and gradgradcheck(fn, (x,), fast_mode=True, nondet_tol=1e-12))
    d = Discriminator(32, channel_base=512, channel_max=32).cuda()
    real = torch.randn(4, 3, 32, 32, device="cuda")
    grads = []
    for backend in ("torch", "triton"):
        with fir.fir_backend(backend):
            x = real.clone().requires_grad_(True)
            d.zero_grad()
            logits = d(x)
            # the last bias has no effect on dD/dx: the 0 * logit gives it a zero gradient, as in the trainer
            (r1_penalty(logits, x) + 0 * logits[0, 0]).backward()
            grads.append(torch.cat([p.grad.flatten() for p in d.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-5)
