"""Face alignment into the FFHQ frame, so that a photo lands where FFHQ-trained generators draw faces.

The procedure is the one published with FFHQ (Karras et al., "A Style-Based Generator Architecture
for GANs", and the ffhq-dataset README), written here from its description:

1. find the face: dlib's HOG frontal detector with one upsampling, the highest-scoring detection,
   then dlib's 68-point landmarks (or landmarks given by the caller);
2. an oriented square ("quad") from the eye centres and the mouth corners: centred a little below
   the eyes, side 4x the eye distance or 3.6x the eye-to-mouth distance, whichever is larger,
   rotated so that the eyes are level;
3. shrink the photo when the quad is much larger than the output, crop around the quad, and where
   the quad runs off the photo, reflect-pad and blend the padding towards a blurred, then flat
   (median colour) version so that the mirrored copy does not read as a second face;
4. sample the quad at 4x the output size (bilinear) and downscale (Lanczos): a supersampled warp.

Photos are read with their EXIF orientation applied, in any mode (grayscale, CMYK, 16-bit, alpha);
JPEGs far larger than needed are decoded at a reduced scale.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ..errors import DataError
from ..npyfile import check_npy_file
from ..outputs import check_output_file, warn_of_leftovers
from ..report import NullReporter, Reporter
from ..weights.registry import locate
from .images import check_image_output, image_errors, save_image, to_rgb, upright

FFHQ_SIZE = 1024  # FFHQ's own crops; projection's aligned.png, reusable (--no-align) by a model of any size
SUPERSAMPLE = 4  # the quad is sampled at 4x the output size, then downscaled
DETECT_AREA = 1024 * 1024  # the detector sees at most this many pixels (its time grows with the area)...
DETECT_MIN = 384  # ...and a long side of at least this, so that faces in tiny photos reach its ~40 px minimum
LANDMARK_FACE_RANGE = (96, 320)  # face box widths (px) at which landmarks are predicted (see _landmarks)
DECODE_MAX = 4096  # JPEGs larger than this (long side) are decoded at 1/2, 1/4 or 1/8 scale


class NoFaceFound(DataError):
    """The detector found no face in a photo."""


@dataclass(frozen=True)
class Face:
    """One detected face: landmarks [68, 2] (x, y in photo pixels) and the detector's score."""

    landmarks: np.ndarray
    score: float


def read_photo(path, name: str | None = None, full: bool = False) -> Image.Image:
    """Any image file (a path or an open binary file; `name` for messages) -> an upright RGB PIL image
    (EXIF orientation applied, any mode converted). full: never decoded at a reduced scale (given
    landmarks are in the photo's own pixels)."""
    name = name or path
    with image_errors(name), Image.open(path) as img:
        if img.format == "JPEG" and max(img.size) > DECODE_MAX and not full:
            # DCT-domain downscale by 2, 4 or 8: fast, and never below DECODE_MAX on the long side
            k = DECODE_MAX / max(img.size)
            img.draft(img.mode, (math.ceil(img.width * k), math.ceil(img.height * k)))
        img.load()
        return to_rgb(upright(img))


@functools.lru_cache(maxsize=1)
def _dlib_models():
    """(detector, 68-point predictor), loaded once per process (the predictor file is 100 MB)."""
    try:
        import dlib
    except ImportError:
        raise DataError("face alignment needs dlib: pip install dlib-bin==20.0.1.post1 "
                        "(or `pip install -e '.[align]'`)") from None
    return dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(locate("dlib_landmarks68")))


def _resized(img: Image.Image, scale: float) -> Image.Image:
    if scale == 1.0:
        return img
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)


def _to_photo(points: np.ndarray, scale: float, offset=(0.0, 0.0)) -> np.ndarray:
    """Pixel-centre positions in a copy scaled by `scale` (of the photo region starting at `offset`)
    -> positions in the photo."""
    return (points + 0.5) / scale - 0.5 + np.asarray(offset, dtype=np.float64)


def _landmarks(dlib, predictor, img: Image.Image, box: np.ndarray) -> np.ndarray:
    """68 landmarks [68, 2] of the face in `box` (left, top, right, bottom edges in photo pixels).

    The predictor compares single pixels, so a face far outside the sizes it was trained on (boxes of
    roughly 80-300 px) is first brought to LANDMARK_FACE_RANGE: the region around the box is cut out
    and rescaled. Faces already in that range are read from the photo as they are.
    """
    width = box[2] - box[0]
    low, high = LANDMARK_FACE_RANGE
    scale = 1.0 if low <= width <= high else (low if width < low else high) / width
    if scale == 1.0:
        region, patch = (0, 0), img
    else:
        margin = width * 0.5
        region = (max(0, math.floor(box[0] - margin)), max(0, math.floor(box[1] - margin)),
                  min(img.width, math.ceil(box[2] + margin)), min(img.height, math.ceil(box[3] + margin)))
        patch = _resized(img.crop(region), scale)
    local = (box - np.array(region[:2] * 2)) * scale
    rect = dlib.rectangle(*(int(round(v)) for v in local[:2]), *(int(round(v)) - 1 for v in local[2:]))
    shape = predictor(np.ascontiguousarray(np.asarray(patch, dtype=np.uint8)), rect)
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
    return _to_photo(points, scale, region[:2])


def detect_faces(img: Image.Image) -> list[Face]:
    """Every face dlib finds in an RGB photo, highest score first, with its 68 landmarks in photo pixels.

    The detector (upsampling once) sees a copy of at most DETECT_AREA pixels (its time grows with the
    area) and with a long side of at least DETECT_MIN; the landmarks are then predicted at a fixed face
    size around each box (see _landmarks).
    """
    dlib, detector, predictor = _dlib_models()
    fits_area = math.sqrt(DETECT_AREA / (img.width * img.height))
    scale = min(fits_area, max(1.0, DETECT_MIN / max(img.size)))
    pixels = np.ascontiguousarray(np.asarray(_resized(img, scale), dtype=np.uint8))
    boxes, scores, _ = detector.run(pixels, 1)
    faces = []
    for box, score in zip(boxes, scores):
        # box corners are pixel edges: photo edge = small edge / scale
        in_photo = np.array([box.left(), box.top(), box.right() + 1, box.bottom() + 1], dtype=np.float64) / scale
        faces.append(Face(_landmarks(dlib, predictor, img, in_photo), float(score)))
    return sorted(faces, key=lambda f: -f.score)


@dataclass(frozen=True)
class Quad:
    """The oriented square to cut out: corners [4, 2] (top-left, bottom-left, bottom-right, top-right,
    in x, y photo pixels) and its side length in pixels."""

    corners: np.ndarray
    side: float


# Below this the padding and warp steps of a crop are under a pixel (divisions by zero, a black
# picture): hand-given landmarks scaled wrong, or a face dlib found in a thumbnail it upsampled.
MIN_FACE_SIDE = 8


def face_quad(landmarks: np.ndarray, detected: bool = False) -> Quad:
    """The FFHQ crop square of a face from its 68 landmarks [68, 2] (x, y); detected: dlib's, not
    the user's (the error for a face too small to align names the one the user can mend)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise DataError(f"landmarks must be a (68, 2) array of x, y; got shape {lm.shape}")
    if not np.isfinite(lm).all():
        bad = int((~np.isfinite(lm)).any(axis=1).sum())
        raise DataError(f"landmarks must be finite x, y: {bad} of the 68 points are NaN or inf")
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)  # the 6 points around each eye
    mouth_l, mouth_r = lm[48], lm[54]  # outer mouth corners
    eyes = (eye_l + eye_r) / 2
    eye_to_eye = eye_r - eye_l
    eye_to_mouth = (mouth_l + mouth_r) / 2 - eyes
    # the x axis of the crop: the eye line, averaged with the eye-to-mouth direction turned 90 degrees
    # (both are horizontal in an upright face; together they are robust to either being short)
    down_turned = np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    axis_x = eye_to_eye + down_turned
    half = max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    if not half > 0 or np.hypot(*axis_x) == 0:
        raise DataError("the landmarks are degenerate (eyes and mouth coincide)")
    if 2 * half < MIN_FACE_SIDE:
        face = "the face found is" if detected else "the landmarks describe a face"
        fix = "a larger picture of the face" if detected else "were they scaled?"
        raise DataError(f"{face} {2 * half:.3g} px across (eyes {np.hypot(*eye_to_eye):.3g} px apart): too small to "
                        f"align; at least {MIN_FACE_SIDE} px is needed ({fix})")
    axis_x = axis_x / np.hypot(*axis_x) * half
    axis_y = np.array([-axis_x[1], axis_x[0]])  # x turned 90 degrees clockwise on screen: points down
    centre = eyes + eye_to_mouth * 0.1
    corners = np.stack([centre - axis_x - axis_y, centre - axis_x + axis_y,
                        centre + axis_x + axis_y, centre + axis_x - axis_y])
    return Quad(corners, float(2 * half))


def _bounds(corners: np.ndarray) -> tuple[int, int, int, int]:
    """Integer bounding box (left, top, right, bottom) of the quad corners."""
    return (math.floor(corners[:, 0].min()), math.floor(corners[:, 1].min()),
            math.ceil(corners[:, 0].max()), math.ceil(corners[:, 1].max()))


def _shrink(img: Image.Image, quad: Quad, size: int) -> tuple[Image.Image, Quad]:
    """Downscale the photo by an integer factor when the face is over 4x the output size (cheaper
    and sharper than letting the warp skip pixels)."""
    factor = int(quad.side / size * 0.5)
    if factor <= 1:
        return img, quad
    img = img.resize((round(img.width / factor), round(img.height / factor)), Image.LANCZOS)
    return img, Quad(quad.corners / factor, quad.side / factor)


def _crop(img: Image.Image, quad: Quad, border: int) -> tuple[Image.Image, Quad]:
    """Cut the photo down to the quad's bounding box plus a border (clipped to the photo)."""
    left, top, right, bottom = _bounds(quad.corners)
    box = (max(left - border, 0), max(top - border, 0), min(right + border, img.width), min(bottom + border, img.height))
    if box == (0, 0, img.width, img.height):
        return img, quad
    return img.crop(box), Quad(quad.corners - box[:2], quad.side)


def _reflect_pad(img: Image.Image, quad: Quad, border: int) -> tuple[Image.Image, Quad]:
    """Where the quad (plus border) runs off the photo, mirror the photo outwards and fade the mirrored
    part into a blur and then into the photo's median colour, deeper into the padding."""
    left, top, right, bottom = _bounds(quad.corners)
    need = (max(border - left, 0), max(border - top, 0), max(right - img.width + border, 0), max(bottom - img.height + border, 0))
    if max(need) <= border - 4:  # only a sliver outside: the warp's edge clamping is invisible there
        return img, quad
    pad_l, pad_t, pad_r, pad_b = np.maximum(need, round(quad.side * 0.3))
    padded = np.pad(np.asarray(img), ((pad_t, pad_b), (pad_l, pad_r), (0, 0)), mode="reflect")
    h, w = padded.shape[:2]
    xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    # depth into the padding: 0 at the photo's edge (and inside it, where it is negative), 1 at the outer edge
    depth_x = 1 - np.minimum(xs / pad_l, (w - 1 - xs) / pad_r)
    depth_y = 1 - np.minimum(ys / pad_t, (h - 1 - ys) / pad_b)
    depth = np.maximum(depth_x[None, :], depth_y[:, None])[..., None]
    pixels = padded.astype(np.float32)
    blurred = np.asarray(Image.fromarray(padded).filter(ImageFilter.GaussianBlur(float(quad.side) * 0.02)), dtype=np.float32)
    pixels += (blurred - pixels) * np.clip(3 * depth + 1, 0, 1)  # blur starts a third of a pad inside the photo
    pixels += (np.median(pixels, axis=(0, 1)) - pixels) * np.clip(depth, 0, 1)
    out = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return out, Quad(quad.corners + (pad_l, pad_t), quad.side)


def align_face(img: Image.Image, landmarks: np.ndarray, size: int = 256, detected: bool = False) -> Image.Image:
    """Cut the FFHQ-aligned face with these landmarks [68, 2] (x, y) out of an RGB photo: size x size RGB
    (detected: see face_quad)."""
    if size < 8:
        raise DataError(f"the aligned size must be at least 8 px, got {size}")
    quad = face_quad(landmarks, detected)
    cx, cy = np.asarray(landmarks, dtype=np.float64).mean(0)
    if not (0 <= cx < img.width and 0 <= cy < img.height):  # a face cut by the frame still has its centre inside
        raise DataError(f"the landmarks lie outside the {img.width}x{img.height} photo (their centre is at "
                        f"{cx:.0f}, {cy:.0f}): were they found on another image?")
    img, quad = _shrink(img, quad, size)
    border = max(round(quad.side * 0.1), 3)
    img, quad = _crop(img, quad, border)
    img, quad = _reflect_pad(img, quad, border)
    big = size * SUPERSAMPLE
    # PIL's QUAD maps the output square onto the source corners (top-left, bottom-left, bottom-right,
    # top-right); +0.5 turns pixel-centre coordinates into PIL's pixel-edge ones
    warped = img.transform((big, big), Image.QUAD, (quad.corners + 0.5).flatten().tolist(), Image.BILINEAR)
    return warped.resize((size, size), Image.LANCZOS)


def crop_coordinates(points: np.ndarray, quad: Quad, size: int) -> np.ndarray:
    """Photo pixel positions [N, 2] (x, y) -> their positions in the size x size crop cut along `quad`
    (both in pixel-centre coordinates)."""
    top_left = quad.corners[0]
    along_x = (quad.corners[3] - top_left) / quad.side  # unit vectors of the crop's axes, in the photo
    along_y = (quad.corners[1] - top_left) / quad.side
    rel = np.asarray(points, dtype=np.float64) - top_left
    return np.stack([rel @ along_x, rel @ along_y], axis=-1) * (size / quad.side) - 0.5


def find_faces(img: Image.Image) -> tuple[Image.Image, list[Face]]:
    """Faces in an RGB photo, highest score first, and the photo they were found in: if none is upright,
    the photo turned by a quarter or half turn (a camera that wrote no EXIF orientation)."""
    for turn in (0, 90, 270, 180):
        turned = img.rotate(turn, expand=True) if turn else img
        faces = detect_faces(turned)
        if faces:
            return turned, faces
    return img, []


def load_landmarks(path: str | Path) -> np.ndarray:
    """A .npy file holding a (68, 2) array of x, y -> float64 [68, 2]."""
    check_npy_file(path, "landmarks")
    try:
        lm = np.load(path, allow_pickle=False)
    except (ValueError, OSError):
        raise DataError(f"{path} is not a .npy array") from None
    if lm.shape != (68, 2) or lm.dtype.kind not in "iuf":  # complex ones would lose their imaginary part
        raise DataError(f"{path} must hold a (68, 2) array of x, y landmarks, not {lm.dtype} {lm.shape}")
    return lm.astype(np.float64)


def align_image(img: Image.Image, size: int = 256, landmarks: np.ndarray | None = None, all_faces: bool = False,
                name: str = "the photo") -> list[Image.Image]:
    """Aligned size x size crops of an RGB photo: the highest-scoring face, or every face left to right
    with `all_faces`, or the face at the given landmarks [68, 2]. Raises NoFaceFound naming `name`."""
    if landmarks is not None:
        return [align_face(img, landmarks, size)]
    if not all_faces:
        return [align_face(*best_face(img, name), size, detected=True)]
    img, faces = find_faces(img)
    if not faces:
        raise NoFaceFound(f"no face found in {name}")
    faces = sorted(faces, key=lambda f: f.landmarks[:, 0].mean())
    return [align_face(img, f.landmarks, size, detected=True) for f in faces]


def best_face(img: Image.Image, name: str = "the photo") -> tuple[Image.Image, np.ndarray]:
    """(the photo as its faces were found in it (see find_faces), the landmarks [68, 2] of its
    highest-scoring face): what align_face needs, to cut that face at several sizes. Raises
    NoFaceFound naming `name`."""
    img, faces = find_faces(img)
    if not faces:
        raise NoFaceFound(f"no face found in {name}")
    return img, faces[0].landmarks


def align_photo(path: str | Path, size: int = 256, landmarks: np.ndarray | None = None,
                all_faces: bool = False) -> list[Image.Image]:
    """`align_image` of an image file (read with read_photo; at full scale for given landmarks, which
    a large JPEG's reduced decode would misplace)."""
    return align_image(read_photo(path, full=landmarks is not None), size, landmarks, all_faces, str(path))


def crop_paths(out: str | Path, n: int) -> list[Path]:
    """Where `align_file --all-faces` writes n crops: OUT_0, OUT_1, ... (one face too: a script
    that reads OUT_0 need not know how many faces a photo held)."""
    out = Path(out)
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(n)]


def align_file(photo: str | Path, out: str | Path, size: int = 256, landmarks: str | Path | None = None,
               all_faces: bool = False, reporter: Reporter | None = None) -> list[Path]:
    """`cartoongan align`: align a photo and write the crop(s); nothing is written when no face is found.
    The output path is checked before any work (with --all-faces, each crop's once the faces are
    counted); each crop is written atomically."""
    check_output_file(out, "-o", inputs=[photo], example="aligned.png")
    check_image_output(out, "-o")
    lm = load_landmarks(landmarks) if landmarks is not None else None
    crops = align_photo(photo, size, lm, all_faces)
    paths = crop_paths(out, len(crops)) if all_faces else [Path(out)]
    if all_faces:
        for path in paths:  # the photo itself may be OUT_0
            check_output_file(path, "-o", inputs=[photo], example="aligned.png")
        _warn_of_other_crops(Path(out), len(paths), reporter or NullReporter())
    for crop, path in zip(crops, paths):
        save_image(crop, path)
    return paths


def _warn_of_other_crops(out: Path, n: int, reporter: Reporter) -> None:
    """Warn of OUT_k files past this photo's n crops (an earlier photo's, with more faces): left as
    they are, they would be read as this photo's."""
    pattern = re.compile(re.escape(out.stem) + r"_(\d+)" + re.escape(out.suffix))
    warn_of_leftovers(out.parent, lambda name: (m := pattern.fullmatch(name)) is not None and int(m[1]) >= n,
                      reporter, "crop(s)")
