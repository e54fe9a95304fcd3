"""Structure-preservation score and perceptual path length."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cartoongan.data.synthetic import draw_params, render
from cartoongan.metrics.ppl import face_crop, path_length_samples, ppl_from_samples, slerp
from cartoongan.metrics.structure import generator_structure_scores, structure_similarity


def _faces(domain: str, params) -> torch.Tensor:
    imgs = [np.asarray(render(p, domain, 64, np.random.RandomState(1))) for p in params]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.fixture(scope="module")
def faces():
    rng = np.random.RandomState(0)
    params = [draw_params(rng) for _ in range(8)]
    return _faces("photo", params), _faces("cartoon", params)


def test_structure_ignores_colour_contrast_and_polarity(faces):
    photo, _ = faces
    mix = torch.tensor([[0.2, 0.7, 0.1], [0.6, 0.1, 0.3], [0.1, 0.3, 0.6]])  # a colour remap, channels mixed
    recoloured = torch.einsum("oc,nchw->nohw", mix, photo) * 0.6 + 0.2
    assert torch.allclose(structure_similarity(photo, photo), torch.ones(8), atol=1e-5)
    assert torch.allclose(structure_similarity(photo, -photo), torch.ones(8), atol=1e-5)  # polarity
    assert structure_similarity(photo, recoloured).min() > 0.95


def test_structure_sees_layout_changes(faces):
    photo, _ = faces
    other = photo.roll(1, 0)  # another face
    moved = photo.roll(6, dims=3)  # the same face 6 px to the right
    assert structure_similarity(photo, other).mean() < 0.7
    assert structure_similarity(photo, photo.flip(2)).mean() < 0.6
    assert structure_similarity(photo, moved).mean() < structure_similarity(photo, photo.roll(1, dims=3)).mean() < 1


def test_structure_ranks_same_face_in_other_style_above_other_faces(faces):
    """The built-in domains draw one face's parameters as a photo and as a cartoon: the score must
    find the pairing despite the completely different rendering."""
    photo, cartoon = faces
    scores = torch.stack([structure_similarity(photo, cartoon.roll(k, 0)) for k in range(8)])  # [shift, face]
    assert (scores.argmax(0) == 0).all()
    assert scores[0].mean() > 0.8 and scores[1:].mean() < 0.6


def test_generator_scores_same_latents(tiny_g):
    g = tiny_g(size=16, seed=0)
    other = tiny_g(size=16, seed=1)
    same = generator_structure_scores(g, g, list(range(4)))
    assert torch.allclose(same, torch.ones(4), atol=1e-5)
    assert generator_structure_scores(g, other, list(range(4))).mean() < 0.9


class _LinearGen:
    """Identity mapping; the image is A w reshaped to [N, 2, 2, 2] (w of 8 dims)."""

    style_dim = 8

    def __init__(self, scale: float = 1.0):
        self.input = SimpleNamespace(input=torch.zeros(1))
        self.a = scale * torch.eye(8)

    def mapping(self, z):
        return z

    def broadcast(self, w):
        return w[:, None]

    def synthesis(self, ws, noise_mode):
        return SimpleNamespace(image=(ws[:, 0] @ self.a.T).view(-1, 2, 2, 2))


def _sq_distance(a, b):
    return (a - b).pow(2).flatten(1).sum(1)


def test_slerp_endpoints_and_constant_speed():
    a, b = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    assert torch.allclose(slerp(a, b, torch.zeros(5, 1, dtype=torch.float64)), unit(a))
    assert torch.allclose(slerp(a, b, torch.ones(5, 1, dtype=torch.float64)), unit(b))
    angle = torch.acos((unit(a) * unit(b)).sum(-1))
    mid = slerp(a, b, torch.full((5, 1), 0.3, dtype=torch.float64))
    assert torch.allclose(torch.acos((mid * unit(a)).sum(-1)), 0.3 * angle)
    assert torch.allclose(mid.norm(dim=-1), torch.ones(5, dtype=torch.float64))


def test_ppl_w_space_is_squared_speed_over_eps_squared():
    # lerp in W with an identity generator: |eps (w1 - w0)|^2 / eps^2 = |w1 - w0|^2, mean 2 * 8 = 16
    s = path_length_samples(_LinearGen(), _sq_distance, n=2000, space="w", batch=500)
    assert s.shape == (2000,)
    assert abs(s.mean() - 16) < 0.8
    scaled = path_length_samples(_LinearGen(3.0), _sq_distance, n=2000, space="w", batch=500)
    np.testing.assert_allclose(scaled, 9 * s, rtol=2e-2)  # distance quadratic in the image change


def test_ppl_z_space_is_squared_angle():
    # slerp on the unit sphere moves at the angle between z0 and z1 per unit t: samples are angle^2
    s = path_length_samples(_LinearGen(), _sq_distance, n=2000, space="z", batch=500)
    rng = np.random.RandomState(0)
    z0, z1 = rng.randn(200_000, 8), rng.randn(200_000, 8)
    cos = (z0 * z1).sum(1) / np.linalg.norm(z0, axis=1) / np.linalg.norm(z1, axis=1)
    expected = (np.arccos(cos) ** 2).mean()
    assert abs(s.mean() - expected) < 0.05 * expected


def test_ppl_percentile_filter_and_crop():
    samples = np.concatenate([np.full(990, 2.0), np.full(5, 1e6), np.full(5, -1e6)])  # 0.5 % outliers each side
    assert ppl_from_samples(samples) == pytest.approx(2.0)
    img = torch.arange(64.0).view(1, 1, 8, 8)
    assert face_crop(img).shape == (1, 1, 4, 4) and face_crop(img)[0, 0, 0, 0] == 3 * 8 + 2
    with pytest.raises(ValueError):
        path_length_samples(_LinearGen(), _sq_distance, n=4, space="q")
