"""`bench --flops`: FLOPs counted from the dispatched ops, per phase and per training image."""
import torch
import torch.nn.functional as F
from cartoongan_cli.app import app
from typer.testing import CliRunner

from cartoongan.bench.flops import count_flops, phase_flops, run_flop_count
from cartoongan.bench.speed import Phases


def test_a_convolution_counts_its_multiply_adds_and_backward_only_what_is_asked():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    forward = 2 * 2 * 4 * 3 * 9 * 8 * 8  # 2 FLOPs per multiply-add, every output pixel
    assert count_flops(lambda: F.conv2d(x, w, padding=1)) == forward
    x.requires_grad_(True)
    assert count_flops(lambda: F.conv2d(x, w, padding=1).sum().backward()) == 2 * forward  # input gradient only
    w.requires_grad_(True)
    assert count_flops(lambda: F.conv2d(x, w, padding=1).sum().backward()) == 3 * forward  # and the weight's


def test_composite_ops_count_through_what_they_are_made_of():
    x, w = torch.randn(4, 8), torch.randn(16, 8)
    with torch.inference_mode():  # F.linear stays one op here, which has no FLOP formula of its own
        assert count_flops(lambda: F.linear(x, w)) == 2 * 4 * 8 * 16


def test_fir_filters_count_as_the_reference_op_whatever_backend_is_chosen():
    """The Triton FIR kernel is a raw launch the counter cannot see: counted under it, a phase
    lost its FIR arithmetic. Counting runs the reference op, the same arithmetic."""
    from cartoongan.ops.fir import active_fir_backend, blur, fir_backend, make_kernel

    x, kernel = torch.randn(2, 8, 16, 16), make_kernel()
    seen = []

    def filtered():
        seen.append(active_fir_backend())
        blur(x, kernel, (2, 1))

    plain = count_flops(filtered)
    with fir_backend("triton"):
        assert count_flops(filtered) == plain > 0
        assert active_fir_backend() == "triton"  # and the choice is back after counting
    assert seen == ["torch", "torch"]


def test_phases_are_counted_per_image_with_the_regularisers_amortised():
    a, b = torch.randn(16, 32), torch.randn(32, 8)
    mm = 2 * 16 * 32 * 8
    phases = Phases(forward=lambda: a @ b, step=lambda: [a @ b for _ in range(3)], r1=lambda: [a @ b for _ in range(16)],
                    path=lambda: [a @ b for _ in range(8)], d_reg_every=16, g_reg_every=4)
    row = phase_flops(phases, "x", "cpu", 4, "ours")
    gflop = mm / 4 / 1e9
    figures = [float(f"{g:.3g}") for g in (gflop, 3 * gflop, 16 * gflop, 8 * gflop, 3 * gflop + gflop + 2 * gflop)]
    assert [row.forward_gflop_img, row.step_gflop_img, row.r1_gflop_img, row.path_gflop_img,
            row.iteration_gflop_img] == figures
    assert row.img_s_per_100_tflops == round(100e3 / (6 * gflop))


def test_the_structure_loss_adds_the_source_render_and_the_cli_prints_the_table():
    plain, struct = run_flop_count(["tiny"], "cpu", batch=2)
    assert (plain.side, struct.side) == ("ours", "ours+struct")
    assert plain.step_gflop_img > 3 * plain.forward_gflop_img  # G forward twice, D forward and backward, G backward
    assert struct.step_gflop_img > plain.step_gflop_img and struct.forward_gflop_img == plain.forward_gflop_img
    amortised = plain.step_gflop_img + plain.r1_gflop_img / 16 + plain.path_gflop_img / 4
    assert abs(plain.iteration_gflop_img / amortised - 1) < 0.01  # each figure is rounded to 3 digits
    assert abs(plain.img_s_per_100_tflops * plain.iteration_gflop_img / 100e3 - 1) < 0.02
    res = CliRunner().invoke(app, ["bench", "--flops", "--configs", "tiny", "--batch", "2", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    words = " ".join(res.output.split())  # the title wraps at 80 columns
    assert "tiny, batch 2, on cpu: GFLOP per training image" in words and "ours+struct" in res.output
    assert f" {plain.img_s_per_100_tflops} │" in res.output.split("img/s at 100 TFLOP/s")[1]


def test_flops_refuses_what_it_cannot_count():
    for extra, says in ((["--profile"], "--flops and --profile"), (["--kernels"], "--kernels times fixed shapes"),
                        (["--compile"], "--compile and --compile-mode apply to"),
                        (["--repeats", "3"], "drop --repeats")):
        res = CliRunner().invoke(app, ["bench", "--flops", "--device", "cpu", *extra])
        assert res.exit_code == 2 and says in res.output and "Traceback" not in res.output, res.output
