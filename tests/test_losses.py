import math

import torch

from cartoongan.train.augment import AdaController, augment
from cartoongan.train.losses import (
    d_logistic_loss,
    ema_beta,
    ema_update,
    g_nonsaturating_loss,
    path_length_penalty,
    r1_penalty,
    structure_loss,
)


def sp(x):
    return math.log1p(math.exp(x))


def test_d_logistic_loss_by_hand():
    real, fake = torch.tensor([[1.0], [-1.0]]), torch.tensor([[2.0], [0.0]])
    expected = (sp(2) + sp(0)) / 2 + (sp(-1) + sp(1)) / 2
    assert math.isclose(d_logistic_loss(real, fake).item(), expected, rel_tol=1e-6)


def test_g_nonsaturating_loss_by_hand():
    fake = torch.tensor([[0.5], [-2.0]])
    assert math.isclose(g_nonsaturating_loss(fake).item(), (sp(-0.5) + sp(2.0)) / 2, rel_tol=1e-6)


def test_r1_of_a_linear_critic_is_its_squared_weight_norm():
    w = torch.randn(1, 3, 4, 4, requires_grad=True)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    logits = (x * w).sum(dim=(1, 2, 3))
    penalty = r1_penalty(logits, x)
    assert torch.allclose(penalty, w.detach().square().sum())
    (grad_w,) = torch.autograd.grad(penalty, w)  # create_graph=True lets the penalty train D
    assert torch.allclose(grad_w, 2 * w.detach())


def test_path_length_by_hand():
    b, L, D, H = 3, 4, 5, 8
    ws = torch.randn(b, L, D, requires_grad=True)
    a = 2.0
    images = (a * ws[:, 0, 0])[:, None, None, None].expand(b, 1, H, H)
    torch.manual_seed(0)
    penalty, new_mean, length = path_length_penalty(images, ws, torch.tensor(0.0))
    torch.manual_seed(0)
    noise = torch.randn(b, 1, H, H) / H
    lengths = (a * noise.sum(dim=(1, 2, 3))).abs() / math.sqrt(L)
    assert torch.allclose(length, lengths.mean())
    assert torch.allclose(new_mean, 0.01 * lengths.mean())
    assert torch.allclose(penalty, (lengths - 0.01 * lengths.mean()).square().mean())


def test_structure_loss_sums_mse_from_8px():
    t = [torch.ones(1, 3, 4, 4), torch.ones(1, 3, 8, 8), torch.full((1, 3, 16, 16), 3.0), torch.zeros(1, 3, 32, 32)]
    s = [torch.zeros_like(x) for x in t]
    assert structure_loss(t, s, 1).item() == 1.0
    assert structure_loss(t, s, 2).item() == 10.0
    assert structure_loss(t, s, 2, weight=0.5).item() == 5.0
    assert structure_loss(t, t, 3).item() == 0.0


def test_ema_update_and_beta():
    ema, model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = ema.weight.detach().clone()
    ema_update(ema, model, 0.9)
    assert torch.allclose(ema.weight, 0.9 * before + 0.1 * model.weight.detach())
    assert math.isclose(ema_beta(10_000, 10), 0.5)
    ema, model = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)  # buffers stay ema's own (rosinality's)
    model.running_mean.fill_(2.0)
    ema_update(ema, model, 0.9)
    assert torch.equal(ema.running_mean, torch.zeros(3))


def test_augment_identity_at_zero_and_differentiable():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    assert augment(x, 0.0) is x
    torch.manual_seed(0)
    y = augment(x * 2 - 1, 1.0)
    assert y.shape == x.shape and not torch.allclose(y, x * 2 - 1)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_ada_sums_its_pending_statistics_where_the_newest_are():
    """On a GPU each observation stays there; summing them on the CPU would read each back (a wait
    for the GPU per entry): the sum is made on the newest entry's device, a resumed CPU entry moved
    there ('meta' stands in for the GPU), and only a save brings it to the CPU."""
    ada = AdaController(interval=4)
    ada.load_state_dict({"p": 0.1, "pending": torch.tensor([1.0, 4.0]), "steps": 2})
    ada.observe(torch.ones(4, 1, device="meta"))
    assert ada._pending_total().device.type == "meta"
    ada = AdaController(interval=4)
    ada.load_state_dict({"p": 0.1, "pending": torch.tensor([1.0, 4.0]), "steps": 2})
    ada.observe(-torch.ones(2, 1))
    assert ada.state_dict()["pending"].tolist() == [-1.0, 6.0]


def test_ada_controller_moves_toward_target():
    ada = AdaController(target=0.6, interval=2, kimg=0.01, batch=4)
    for _ in range(2):
        ada.observe(torch.ones(4, 1))  # D sure of every real: overfitting -> raise p
    assert math.isclose(ada.maybe_update(), 4 * 2 / 10)
    for _ in range(2):
        ada.observe(-torch.ones(4, 1))
    assert math.isclose(ada.maybe_update(), 0.0)
