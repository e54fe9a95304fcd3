"""Identity similarity: cosine similarity of dlib's 128-d face embeddings for pairs of images.

How much of a person survives toonify or swap: 1 = the same embedding, around 0.9+ is the same person
for dlib's ResNet (its authors' threshold is a Euclidean distance of 0.6 between unit vectors, i.e.
cosine 0.82). Both images of a pair are cut to dlib's aligned 150x150 face chip with the SAME
landmarks (found on the first image, else the second), so a cartoon is not penalised for being hard
to detect. Where no face is found in either, the whole image is used as the chip (aligned crops
such as FFHQ's and our synthetic faces are already centred) and the caller is told how often.
"""
from __future__ import annotations

import numpy as np

from ..errors import CartoonganError
from ..report import NullReporter, Reporter
from ..weights.registry import locate

EMBEDDING, LANDMARKS5 = "dlib_face_embedding", "dlib_landmarks5"  # registry keys (weights/registry.py)
CHIP = 150  # dlib's embedding network input side


def _dlib():
    try:
        import dlib
    except ImportError:
        raise CartoonganError("identity similarity needs dlib: pip install dlib-bin==20.0.1.post1 "
                              "(or `pip install cartoongan[metrics]`)") from None
    return dlib


class FaceEmbedder:
    """uint8 RGB images [H, W, 3] -> unit 128-d dlib embeddings, pairs cut with shared landmarks."""

    def __init__(self):
        dlib = _dlib()
        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(str(locate(LANDMARKS5)))
        self.net = dlib.face_recognition_model_v1(str(locate(EMBEDDING)))

    def find(self, image: np.ndarray):
        """5-point landmarks of the largest face (one upsampling), or None."""
        faces = self.detector(image, 1)
        if not faces:
            return None
        box = max(faces, key=lambda r: r.area())
        return self.landmarks(image, box)

    def chip(self, image: np.ndarray, shape) -> np.ndarray:
        if shape is None:
            from PIL import Image

            return np.asarray(Image.fromarray(image).resize((CHIP, CHIP), Image.LANCZOS))
        return np.asarray(self.dlib.get_face_chip(image, shape, size=CHIP, padding=0.25))

    def embed(self, chip: np.ndarray) -> np.ndarray:
        v = np.asarray(self.net.compute_face_descriptor(np.ascontiguousarray(chip)), np.float64)
        return v / np.linalg.norm(v)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> tuple[float, bool]:
        """Cosine similarity of one pair, and whether a face was found. A pair of two sizes (1024 px
        aligned photos against 256 px renders) is compared at the smaller one, as LPIPS is: the
        landmarks of one are the other's only at the same size."""
        a, b = _same_size(a, b)
        shape = self.find(a)
        if shape is None:
            shape = self.find(b)
        return float(self.embed(self.chip(a, shape)) @ self.embed(self.chip(b, shape))), shape is not None


def _same_size(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The larger of two uint8 [H, W, 3] images downscaled (Lanczos) to the other's size."""
    if a.shape == b.shape:
        return a, b
    from PIL import Image

    def to(image, shape):
        return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.LANCZOS))

    return (to(a, b.shape), b) if a.shape[0] > b.shape[0] else (a, to(b, a.shape))


def mean_identity(a: np.ndarray, b: np.ndarray, reporter: Reporter | None = None,
                  embedder: FaceEmbedder | None = None) -> float:
    """Mean identity similarity over pairs of uint8 [P, H, W, 3] images (same index = same person)."""
    reporter = reporter or NullReporter()
    embedder = embedder or FaceEmbedder()
    sims, missed = [], 0
    with reporter.progress(len(a), "identity") as bar:
        for x, y in zip(a, b):
            sim, found = embedder.similarity(np.ascontiguousarray(x), np.ascontiguousarray(y))
            sims.append(sim)
            missed += not found
            bar.advance()
    if missed:
        reporter.warn(f"identity: no face found in {missed} of {len(a)} pair(s); used the whole image there")
    return float(np.mean(sims))
