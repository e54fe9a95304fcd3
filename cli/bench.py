"""`cartoongan bench`: speed tables (ours, op alternatives, rosinality side by side)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import DEVICE, CompileMode, Precision, app, user_errors
from .console import RichReporter, fail, out, result_json


@app.command()
def bench(
    device: str = DEVICE,
    configs: Optional[str] = typer.Option(None, "--configs", help="Comma-separated: tiny, demo64, r64, r256 "
                                          "(default: tiny,demo64,r64 on the CPU, tiny,r64,r256 on CUDA; "
                                          "with --reference: r64 on the CPU, r256 on CUDA)."),
    precision: Precision = typer.Option(Precision("fp32"), "--precision", help="Math mode of our side (see pretrain --help)."),
    repeats: Optional[int] = typer.Option(None, "--repeats", min=1, max=1000, help="Timed repeats per phase, median reported "
                                          "(default: 5; with --profile, profiled calls per phase: 2)."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Batch (default per config and device)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile our networks (plain table and --reference)."),
    compile_mode: Optional[CompileMode] = typer.Option(None, "--compile-mode", help="torch.compile mode (implies "
                                                       "--compile); reduce-overhead replays CUDA graphs."),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last", help="NHWC activations."),
    grouped_modconv: bool = typer.Option(False, "--grouped-modconv", help="Per-sample grouped modulated conv (for comparison)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="A rosinality/stylegan2-pytorch checkout: "
                                             "time it at the same configs and print the ratios."),
    kernels: bool = typer.Option(False, "--kernels", help="Time each speed choice against its alternative, op by op."),
    profile: bool = typer.Option(False, "--profile", help="Where each training phase's time goes: the ops (CPU) or "
                                 "kernels (CUDA) with the most self time, of one config (demo64 CPU, r256 CUDA)."),
    flops: bool = typer.Option(False, "--flops", help="Count each phase's FLOPs per image instead of timing it "
                               "(ours, with the structure loss, and the --reference's): the floor under a timing."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
):
    """Measure generator forward, training iteration and structure-loss iteration speed (img/s)."""
    from cartoongan.bench.request import BenchRequest, measure
    from cartoongan.device import check_precision, precision_note, resolve_device
    from cartoongan.errors import RowsStopped

    reporter = RichReporter()
    req = BenchRequest(device=device, configs=configs, precision=precision.value, batch=batch, repeats=repeats,
                       compile_mode=compile_mode.value if compile_mode else ("default" if compile_ else None),
                       channels_last=channels_last, grouped_modconv=grouped_modconv, reference=reference,
                       kernels=kernels, profile=profile, flops=flops)
    with user_errors():
        dev = resolve_device(device)
        check_precision(precision.value, dev)
        if note := precision_note(precision.value, dev):  # the table's rows would say tf32
            reporter.warn(note)
        req.check(dev)
        stopped = None
        try:
            rows = measure(req, dev, reporter)
        except RowsStopped as exc:  # a Ctrl-C, or the device plan's SIGINT at a step's timeout: keep the rows
            rows, stopped = exc.rows, exc
    _print_rows(rows, as_json, flops, reference, req.title(dev))
    if stopped is not None:
        fail(str(stopped), 130)


def _print_rows(measured: list, as_json: bool, flops: bool, reference, title: str) -> None:
    from dataclasses import asdict

    rows = [asdict(r) for r in measured]
    if as_json:
        result_json(rows)
        return
    if flops:  # the reference's figures, if any, are columns of the same tables
        _print_flops(rows)
        return
    if reference is not None:
        from cartoongan.bench.reference import goal_rows

        for row, comparison in zip(rows, measured):
            _print_comparison(row, goal_rows(comparison))
        return
    _print_table(title, rows)


def _print_table(title: str, rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in rows[0]:
        table.add_column(BENCH_HEADINGS.get(col, col))
    for r in rows:
        table.add_row(*["-" if v is None else str(v) for v in r.values()])
    out.print(table)


def _print_comparison(row: dict, goals) -> None:
    """One config against the reference, a measure per line (fits 80 columns), with its goal."""
    from rich.table import Table

    table = Table(title=f"{row['config']}, batch {row['batch']}, on {row['device']}: cartoongan "
                        f"({row['precision']}, {row['compile_mode']}) vs rosinality/stylegan2-pytorch "
                        "(goals set for r256 on one GPU)")
    for col in ("measure", "ours", "reference", "x", "goal", "met"):
        table.add_column(col)
    goal = {g.measure: (g.bound, "yes" if g.met else "NO") for g in goals}
    peak_x = (round(row["ours_peak_mb"] / row["reference_peak_mb"], 2)
              if row["ours_peak_mb"] and row["reference_peak_mb"] else None)
    lines = [("G forward, img/s", row["ours_forward_img_s"], row["reference_forward_img_s"], row["forward_ratio"],
              *goal["forward"]),
             ("training iteration, img/s", row["ours_train_img_s"], row["reference_train_img_s"], row["train_ratio"],
              *goal["train"]),
             ("structure-loss iter. / plain", None, None, row["struct_cost"], *goal["structure"]),
             ("peak MB above weights", row["ours_peak_mb"], row["reference_peak_mb"], peak_x, None, None)]
    for line in lines:
        table.add_row(*["-" if v is None else str(v) for v in line])
    out.print(table)


FLOP_MEASURES = (("G forward", "forward_gflop_img"), ("D+G step", "step_gflop_img"), ("R1 step", "r1_gflop_img"),
                 ("path-length step", "path_gflop_img"), ("iteration, amortised", "iteration_gflop_img"),
                 ("img/s at 100 TFLOP/s", "img_s_per_100_tflops"))


def _print_flops(rows: list[dict]) -> None:
    """One table per config: a line per phase, a column per side (fits 80 columns)."""
    from rich.table import Table

    for config in dict.fromkeys(r["config"] for r in rows):
        sides = [r for r in rows if r["config"] == config]
        table = Table(title=f"{config}, batch {sides[0]['batch']}, on {sides[0]['device']}: GFLOP per training "
                            "image, one call of each phase; the last line is the floor that arithmetic alone sets")
        table.add_column("measure")
        for r in sides:
            table.add_column(r["side"], justify="right")
        for label, key in FLOP_MEASURES:
            table.add_row(label, *[f"{r[key]:g}" if isinstance(r[key], float) else str(r[key]) for r in sides])
        out.print(table)


# short column headings so that the tables fit 80 columns
BENCH_HEADINGS = {
    "precision": "prec", "g_forward_img_s": "G fwd", "train_iter_img_s": "train", "struct_iter_img_s": "struct",
    "peak_mem_mb": "peak MB", "ours_ms": "ms", "alternative_ms": "ms", "speedup": "x", "ours_ops": "ops", "alternative_ops": "alt ops",
    "ours_forward_img_s": "fwd", "reference_forward_img_s": "ref fwd", "forward_ratio": "x",
    "ours_train_img_s": "train", "reference_train_img_s": "ref train", "train_ratio": "x",
    "ours_peak_mb": "MB", "reference_peak_mb": "ref MB",
}

