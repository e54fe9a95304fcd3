"""Built-in offline face domains: procedural faces drawn as "photo" or "cartoon".

Both domains draw from one distribution of face parameters, so a generator fine-tuned from
photo to cartoon has a well-defined structure to keep. "photo" renders soft shading, lighting,
blur and skin texture; "cartoon" flat colours, dark outlines and stylised (larger) eyes.
Images are drawn at 4x and downsampled for clean edges.
"""
from __future__ import annotations

import colorsys
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import ConfigError, Interrupted
from ..outputs import check_fresh_dir, sole_writer, writing
from ..report import NullReporter, Reporter
from .dataset import warn_unless_power_of_two
from .images import save_image

DOMAINS = ("photo", "cartoon")


SKIN = [(255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 96), (141, 85, 54), (96, 60, 40)]


HAIR = [(30, 24, 20), (86, 52, 30), (150, 100, 50), (225, 190, 110), (170, 60, 30), (160, 160, 160)]


IRIS = [(90, 60, 30), (60, 110, 170), (70, 130, 80), (110, 110, 120)]


HAIR_STYLES = ("short", "long", "bob", "bald")


@dataclass
class FaceParams:
    cx: float  # face centre x, fraction of width (pose offset)
    cy: float  # face centre y
    face_w: float  # half-width of the face ellipse, fraction of width
    face_h: float  # half-height
    skin: tuple  # RGB
    hair_style: str
    hair: tuple  # RGB
    eye_spacing: float  # half distance between eyes, fraction of face width
    eye_size: float  # eye radius, fraction of face width
    iris: tuple  # RGB
    brow_tilt: float  # -1 (frown) .. 1 (raised outer ends)
    nose_len: float  # fraction of face height
    mouth_curve: float  # -1 (frown) .. 1 (smile)
    mouth_w: float  # half-width, fraction of face width
    background: tuple  # RGB
    shirt: tuple  # RGB
    light: float  # light direction in radians (photo shading)


def _jitter(rng, color, amount):
    return tuple(int(np.clip(c + rng.randint(-amount, amount + 1), 0, 255)) for c in color)


def draw_params(rng: np.random.RandomState) -> FaceParams:
    """One face from the shared parameter distribution."""
    hsv_bg = (rng.rand(), 0.15 + 0.35 * rng.rand(), 0.55 + 0.4 * rng.rand())
    hsv_shirt = (rng.rand(), 0.3 + 0.5 * rng.rand(), 0.3 + 0.6 * rng.rand())
    to_rgb = lambda hsv: tuple(int(255 * c) for c in colorsys.hsv_to_rgb(*hsv))  # noqa: E731
    return FaceParams(
        cx=0.5 + rng.uniform(-0.06, 0.06), cy=0.48 + rng.uniform(-0.04, 0.04),
        face_w=rng.uniform(0.22, 0.29), face_h=rng.uniform(0.28, 0.35),
        skin=_jitter(rng, SKIN[rng.randint(len(SKIN))], 12),
        hair_style=HAIR_STYLES[rng.choice(4, p=[0.4, 0.3, 0.2, 0.1])],
        hair=_jitter(rng, HAIR[rng.randint(len(HAIR))], 15),
        eye_spacing=rng.uniform(0.3, 0.42), eye_size=rng.uniform(0.08, 0.11),
        iris=_jitter(rng, IRIS[rng.randint(len(IRIS))], 15),
        brow_tilt=rng.uniform(-1, 1), nose_len=rng.uniform(0.12, 0.22),
        mouth_curve=rng.uniform(-0.6, 1.0), mouth_w=rng.uniform(0.25, 0.4),
        background=to_rgb(hsv_bg), shirt=to_rgb(hsv_shirt), light=rng.uniform(0, 2 * np.pi),
    )


def _saturate(color, factor):
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in color))
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, min(1.0, s * factor), min(1.0, v * 1.05)))


def _draw_face(p: FaceParams, S: int, cartoon: bool) -> Image.Image:
    img = Image.new("RGB", (S, S), p.background)
    d = ImageDraw.Draw(img)
    line = max(1, S // 48) if cartoon else 0
    outline = (25, 20, 20) if cartoon else None
    col = (lambda c: _saturate(c, 1.25)) if cartoon else (lambda c: c)
    cx, cy, fw, fh = p.cx * S, p.cy * S, p.face_w * S, p.face_h * S
    # shoulders
    d.ellipse([cx - 2.2 * fw, cy + 0.95 * fh, cx + 2.2 * fw, cy + 3.2 * fh], fill=col(p.shirt), outline=outline, width=line)
    d.rectangle([cx - 0.35 * fw, cy + 0.6 * fh, cx + 0.35 * fw, cy + 1.05 * fh], fill=col(p.skin))  # neck
    if p.hair_style in ("long", "bob"):
        bottom = cy + (1.35 if p.hair_style == "long" else 0.75) * fh
        d.rounded_rectangle([cx - 1.2 * fw, cy - 1.15 * fh, cx + 1.2 * fw, bottom], radius=int(fw * 0.9),
                            fill=col(p.hair), outline=outline, width=line)
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=col(p.skin), outline=outline, width=line)
    if p.hair_style != "bald":
        d.chord([cx - 1.08 * fw, cy - 1.2 * fh, cx + 1.08 * fw, cy + 0.35 * fh], 180, 360, fill=col(p.hair),
                outline=outline, width=line)
    scale = 1.6 if cartoon else 1.0
    er = p.eye_size * 2 * fw * scale
    ey = cy - 0.12 * fh
    for side in (-1, 1):
        ex = cx + side * p.eye_spacing * 2 * fw * 0.5 * 1.25
        d.ellipse([ex - er, ey - er * 0.75, ex + er, ey + er * 0.75], fill=(250, 250, 250), outline=outline or (90, 70, 60),
                  width=max(line, 1))
        ir = er * (0.62 if cartoon else 0.5)
        d.ellipse([ex - ir, ey - ir * 0.95, ex + ir, ey + ir * 0.95], fill=col(p.iris))
        d.ellipse([ex - ir * 0.45, ey - ir * 0.45, ex + ir * 0.45, ey + ir * 0.45], fill=(15, 10, 10))
        if cartoon:
            d.ellipse([ex - ir * 0.1 + ir * 0.3, ey - ir * 0.55, ex + ir * 0.35 + ir * 0.3, ey - ir * 0.1], fill=(255, 255, 255))
        by = ey - er * 1.25
        inner, outer = by + p.brow_tilt * er * 0.3, by - p.brow_tilt * er * 0.3
        d.line([(ex - side * er, inner), (ex + side * er, outer)], fill=col(p.hair) if not cartoon else (30, 20, 15),
               width=max(2, int(S / 40)))
    ny = cy + p.nose_len * fh
    nose_col = tuple(int(c * 0.75) for c in p.skin)
    if cartoon:
        d.line([(cx, cy), (cx - 0.06 * fw, ny), (cx + 0.04 * fw, ny)], fill=(40, 25, 20), width=line)
    else:
        d.polygon([(cx, cy - 0.05 * fh), (cx - 0.12 * fw, ny), (cx + 0.12 * fw, ny)], fill=nose_col)
    mw, my = p.mouth_w * fw * 2 * 0.5, cy + 0.5 * fh
    bend = p.mouth_curve * 0.12 * fh
    pts = [(cx - mw, my - bend * 0.5), (cx, my + bend), (cx + mw, my - bend * 0.5)]
    d.line(pts, fill=(150, 40, 50) if not cartoon else (60, 10, 20), width=max(2, int(S / (28 if cartoon else 36))),
           joint="curve")
    return img


def _photo_finish(img: Image.Image, p: FaceParams, rng: np.random.RandomState) -> Image.Image:
    S = img.size[0]
    img = img.filter(ImageFilter.BoxBlur(S // 60 + 1))
    a = np.asarray(img, dtype=np.float32)
    yy, xx = np.mgrid[:S, :S] / S - 0.5
    shade = 1.0 + 0.35 * (np.cos(p.light) * xx + np.sin(p.light) * yy) - 0.35 * (xx**2 + yy**2)
    a = a * shade[..., None]
    a += rng.normal(0, 4, size=(S // 2, S // 2, 1)).repeat(2, 0).repeat(2, 1)  # skin/film texture
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def render(p: FaceParams, domain: str, size: int, rng: np.random.RandomState) -> Image.Image:
    """One face [size x size] of the given domain."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    cartoon = domain == "cartoon"
    big = _draw_face(p, size * (4 if cartoon else 2), cartoon)  # crisp outlines need more supersampling
    if domain == "photo":
        big = _photo_finish(big, p, rng)
    return big.resize((size, size), Image.LANCZOS)


def is_synth_folder(names: list[str]) -> bool:
    """Entries of a folder that `synthesize` wrote (params.jsonl and NNNNNN.png only): safe to rewrite."""
    return "params.jsonl" in names and all(n == "params.jsonl" or re.fullmatch(r"\d{6}\.png", n) for n in names)


def synthesize(domain: str, n: int, size: int, out: str | Path, seed: int = 0, reporter: Reporter | None = None) -> Path:
    """Write n faces (NNNNNN.png) and params.jsonl to `out`; the same seed gives the same files.

    `out` must be new, empty, or an earlier synthesize folder (whose faces are replaced);
    params.jsonl gets one line per finished face, so a count of its lines says how far it got."""
    reporter = reporter or NullReporter()
    if domain not in DOMAINS:
        raise ConfigError(f"--domain must be one of {', '.join(DOMAINS)}, got '{domain}'")
    if n < 1 or size < 8:
        raise ConfigError("--n must be >= 1 and --size >= 8")
    warn_unless_power_of_two(size, reporter)
    purpose = "data synth writes NNNNNN.png and params.jsonl there"
    out = check_fresh_dir(out, "--out", purpose, is_synth_folder)
    with sole_writer(out, "data synth"):
        check_fresh_dir(out, "--out", purpose, is_synth_folder)  # again: nobody else fills it now
        return _synthesize(domain, n, size, out, seed, reporter)


def _synthesize(domain: str, n: int, size: int, out: Path, seed: int, reporter: Reporter) -> Path:
    stale = [p for p in out.glob("[0-9]" * 6 + ".png") if int(p.stem) >= n] if out.is_dir() else []
    earlier = synthesized_count(out)
    if earlier:  # a run's recorded --data may be this folder: say what goes
        reporter.warn(f"{out} holds an earlier synthesis of {earlier} face(s): replacing it with {n} {domain} face(s)")
    rng = np.random.RandomState(seed)
    log_path = out / "params.jsonl"
    with writing(log_path):
        out.mkdir(parents=True, exist_ok=True)
        for p in stale:  # an earlier, larger synthesis in this folder
            p.unlink()
        done = 0
        try:
            with open(log_path, "w") as log, reporter.progress(n, f"synthesising {domain} faces") as bar:
                for i in range(n):
                    params = draw_params(rng)
                    save_image(render(params, domain, size, rng), out / f"{i:06d}.png")
                    done = i + 1  # before its line: a face kept unlisted is rewritten later, a listed one gone is not
                    log.write(json.dumps({"file": f"{i:06d}.png", "domain": domain, **asdict(params)}) + "\n")
                    bar.advance()
        except BaseException as exc:  # a Ctrl-C, a SIGTERM, a full disk: never a mix of two syntheses
            for p in out.glob("[0-9]" * 6 + ".png"):  # the earlier synthesis's faces past this one's
                if int(p.stem) >= done:
                    p.unlink(missing_ok=True)
            if not isinstance(exc, KeyboardInterrupt):
                raise
            raise Interrupted(f"interrupted after {done} of {n} faces: {out} holds those (params.jsonl lists them), "
                              "not a mix with the earlier synthesis", "run the same command again to finish it") from None
    return out


def synthesized_count(folder: str | Path) -> int:
    """How many faces a synthesize run finished in `folder` (0 when it is not one)."""
    try:
        with open(Path(folder) / "params.jsonl") as fh:
            return sum(1 for line in fh if line.endswith("\n"))
    except OSError:
        return 0


def ensure_synthesized(domain: str, n: int, size: int, out: str | Path, seed: int = 0,
                       reporter: Reporter | None = None) -> Path:
    """`out` holding n synthesized faces: kept when an earlier run finished them all, else
    (none yet, or a run stopped part-way) written again."""
    if synthesized_count(out) < n:
        synthesize(domain, n, size, out, seed, reporter)
    return Path(out)
