"""Training curves from a run's log.jsonl: losses, KID/FID (when the run evaluated) and ADA p."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..errors import DataError, OutputError
from ..filekind import is_legacy_torch, not_found, zip_kind, zip_names
from ..outputs import atomic_write, check_output_file
from ..report import NullReporter, Reporter

LOSS_KEYS = ("loss_d", "loss_g", "loss_struct", "r1", "path_length")
PLOT_SOFTWARE = "cartoongan plot"  # the PNG's Software entry: what plot may replace


def check_replaceable(out: Path) -> None:
    """Refuse an existing --out that plot did not draw (matplotlib's PNGs, this version's or
    earlier ones', say so in their Software entry): a run's sample grid, a face of a dataset."""
    if not out.is_file():
        return
    from PIL import Image

    try:
        with Image.open(out) as img:
            software = str(img.info.get("Software", ""))
    except Exception:  # noqa: BLE001 - whatever it is (a bomb's header too), plot did not draw it
        software = ""
    if not software.startswith((PLOT_SOFTWARE, "Matplotlib", "matplotlib")):
        raise OutputError(f"--out {out} exists and is no picture plot drew (a sample grid? a dataset image?): "
                          "pass another --out, or delete it first")


GAP = {"_gap": True}  # where read_log(gaps=True) skipped a damaged line: series breaks the curve there


def _refuse_other_kinds(path: Path) -> None:
    """A checkpoint, image or archive given for the log is named for what it is, from its first
    bytes: read whole as text, `plot RUN/latest.pt` warned of 49238 damaged lines first."""
    from ..weights.checkpoint import foreign_kind

    with open(path, "rb") as fh:
        head = fh.read(32)
    if head.startswith(b"PK"):
        kind = zip_kind(zip_names(path)) or "a zip archive"
    elif is_legacy_torch(head):
        kind = "a PyTorch checkpoint"
    elif not (kind := foreign_kind(head)):
        return
    raise DataError(f"{path} is not a training log: it is {kind}; pass the run folder that holds log.jsonl "
                    f"(e.g. {path.parent})")


def _runs_inside(folder: Path) -> list[Path]:
    """The run folders one or two levels inside `folder`, in name order (`demo` holds
    demo/finetune; `ablation` a run per method), for the message of `plot` of such a folder."""
    from ..data.dataset import is_run_folder

    found = []
    for pattern in ("*/log.jsonl", "*/*/log.jsonl"):
        found += [p.parent for p in sorted(folder.glob(pattern)) if is_run_folder(p.parent)]
    return found


def read_log(run_dir: str | Path, reporter: Reporter | None = None, gaps: bool = False) -> list[dict]:
    """The rows of RUN/log.jsonl (a run folder or the file itself). A torn last line (a kill
    mid-write) is ignored quietly; damaged lines before it are skipped with a warning (and stand
    as GAP rows with `gaps`)."""
    path = Path(run_dir)
    if not path.exists():
        raise DataError(not_found("run folder", path))
    folder = path if path.is_dir() else None
    path = path / "log.jsonl" if path.is_dir() else path
    if not path.is_file():
        inside = _runs_inside(folder) if folder is not None else []
        hint = (f"; it holds the run folder(s) {', '.join(map(str, inside[:3]))}{', ...' if len(inside) > 3 else ''}: "
                "pass one" if inside else ": pass a run folder written by pretrain/finetune")
        raise DataError(f"no training log at {path}{hint}")
    _refuse_other_kinds(path)
    # line by line: one line of other bytes (a damaged disk block) costs that line, not the log
    lines = path.read_bytes().removeprefix(b"\xef\xbb\xbf").splitlines()  # an editor's BOM is no damage
    rows, damaged, undecodable = [], [], 0
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            undecodable += 1
            damaged.append(number)
            rows += [GAP] if gaps else []
            continue
        except (ValueError, RecursionError):  # torn, or a number or nesting past what the parser takes
            if number < len(lines):  # a run killed mid-write leaves a partial last line: quietly skipped
                damaged.append(number)
                rows += [GAP] if gaps else []
            continue
        if isinstance(row, dict) and _plottable(row.get("step")):
            rows.append(row)
        else:  # valid JSON but no row ([1, 2], {"step": "x"}): these went without a word
            damaged.append(number)
            rows += [GAP] if gaps else []
    if damaged:  # the trainer never writes these (a resume drops a torn line): an edit or a damaged disk
        shown = ", ".join(map(str, damaged[:5])) + (", ..." if len(damaged) > 5 else "")
        (reporter or NullReporter()).warn(f"{path}: skipped {len(damaged)} damaged line(s) (line {shown}), not "
                                          "JSON log rows (objects with a numeric step): the curves break there")
    if not any(r is not GAP for r in rows) and undecodable:
        raise DataError(f"{path} is not a log.jsonl (it is not text): pass a run folder written by "
                        "pretrain/finetune")
    if not any(r is not GAP for r in rows):
        raise DataError(f"{path} holds no log rows yet")
    return rows


def _plottable(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= 1e30


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one key over the rows that have it. A value that is no plottable number
    (NaN, inf, past 1e30 as a diverged loss is, a string) and a GAP row become a NaN point, where
    matplotlib breaks the line (and which it leaves out of the axis's scale): the line joined the
    rows on either side, as if the values between had been measured."""
    nan = float("nan")
    pts = [(nan, nan) if r is GAP else (r["step"], r[key] if _plottable(r[key]) else nan)
           for r in rows if r is GAP or key in r]
    while pts and pts[0][1] != pts[0][1]:  # no gap before the first value or after the last
        pts.pop(0)
    while pts and pts[-1][1] != pts[-1][1]:
        pts.pop()
    return [p[0] for p in pts], [p[1] for p in pts]


def panels(rows: list[dict]) -> list[tuple[str, list[str]]]:
    """Which panels the log supports: (title, keys with a plottable value), in drawing order."""
    keys = {k for r in rows for k, v in r.items() if _plottable(v)}
    out = [("losses", [k for k in LOSS_KEYS if k in keys])]
    metric_keys = sorted(k for k in keys if k.split("_")[0] in ("kid", "fid"))
    if metric_keys:
        out.append(("KID / FID", metric_keys))
    if any(_plottable(r.get("ada_p")) and r["ada_p"] for r in rows):
        out.append(("ADA p", ["ada_p"]))
    return [(title, ks) for title, ks in out if ks]


def plot_run(run_dir: str | Path, out: str | Path | None = None, reporter: Reporter | None = None) -> Path:
    """Draw the run's curves (one panel each: losses, KID/FID if logged, ADA p if it moved) to a PNG.

    out defaults to RUN/curves.png. Needs matplotlib.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    out = Path(out) if out else (Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent) / "curves.png"
    check_output_file(out, "--out", example="curves.png")
    if out.suffix.lower() != ".png":  # nor a run's log.jsonl, latest.pt or config.toml, turned into a picture
        raise OutputError(f"--out {out}: plot writes a PNG; name a .png file, e.g. {out.with_suffix('.png').name}")
    check_replaceable(out)
    rows = read_log(run_dir, reporter, gaps=True)
    # against steps, not kimg: a log an older version resumed at a larger batch has a kimg that
    # jumps ahead (step x the new batch), which no row marks
    chosen = panels(rows)
    if not chosen:
        raise DataError(f"{run_dir}: its {len(rows)} log row(s) hold no finite loss, KID/FID or ADA value to plot")
    fig, axes = plt.subplots(len(chosen), 1, figsize=(7, 2.6 * len(chosen)), sharex=True, squeeze=False)
    for ax, (title, keys) in zip(axes[:, 0], chosen):
        for key in keys:
            steps, values = series(rows, key)
            # a line of one point draws nothing: dots for few values, and where a gap leaves one alone
            dots = title != "losses" or sum(v == v for v in values) < 3 or any(v != v for v in values)
            ax.plot(steps, values, label=key, marker="o" if dots else None, markersize=3)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1, 0].set_xlabel("step")
    with warnings.catch_warnings():  # a legend of dozens of KID keys cannot fit: drawn untightened, not a
        warnings.filterwarnings("ignore", "Tight layout not applied")  # line of matplotlib's source
        fig.tight_layout()
    with atomic_write(out) as fh:
        fig.savefig(fh, format="png", dpi=100, metadata={"Software": PLOT_SOFTWARE})
    plt.close(fig)
    return out
