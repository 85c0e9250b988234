"""The clipping rules against hand-computed thresholds and torch's own ``clip_grad_norm_``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from lightning_opt.clipping.kernels import (
    ClipStats,
    clip_grad_by_weight_norm_,
    clip_grad_norm_global_,
    clip_grad_norm_per_tensor_,
)

RTOL = 1e-5  # torch's clip_grad_norm_ divides by norm + 1e-6


def make_params(grad_scales: list[float], seed: int = 0, shapes=None) -> list[Tensor]:
    """Parameters with unit-ish weights and gradients of norm about ``grad_scales[i] * ||W_i||``."""
    gen = torch.Generator().manual_seed(seed)
    shapes = (shapes or [(4, 3), (5,), (2, 2, 3), (7,)])[: len(grad_scales)]
    params = []
    for shape, scale in zip(shapes, grad_scales, strict=True):
        p = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()
        g = torch.randn(shape, generator=gen, dtype=torch.float64)
        p.grad = g / g.norm() * p.detach().norm() * scale
        params.append(p)
    return params


def grads(params: list[Tensor]) -> list[Tensor]:
    return [p.grad.clone() for p in params]


def test_weight_norm_clips_to_threshold_and_keeps_direction():
    clip_factor = 0.5
    params = make_params([0.1, 2.0, 0.4, 3.0])  # tensors 1 and 3 exceed 0.5 * ||W||
    before = grads(params)
    stats = clip_grad_by_weight_norm_(params, clip_factor)
    for p, g0 in zip(params, before, strict=True):
        threshold = clip_factor * p.detach().norm()
        g = p.grad
        assert g.norm() <= threshold * (1 + 1e-12)
        if g0.norm() > threshold:
            torch.testing.assert_close(g.norm(), threshold, rtol=1e-12, atol=0)
            cosine = torch.dot(g.flatten(), g0.flatten()) / (g.norm() * g0.norm())
            torch.testing.assert_close(cosine, torch.tensor(1.0, dtype=cosine.dtype))
        else:
            assert torch.equal(g, g0)  # bit-identical
    assert stats.fraction_clipped.item() == 0.5
    scale_1 = 0.5 / 2.0
    scale_3 = 0.5 / 3.0
    torch.testing.assert_close(stats.mean_scale.item(), (1 + scale_1 + 1 + scale_3) / 4)


def test_eps_floor_keeps_gradient_of_zero_weight():
    bias = torch.zeros(5, requires_grad=True)
    bias.grad = torch.ones(5)
    clip_grad_by_weight_norm_(bias, clip_factor=0.1, eps=1e-2)
    torch.testing.assert_close(bias.grad.norm(), torch.tensor(0.1 * 1e-2))
    assert (bias.grad > 0).all()  # direction kept, not zeroed


def test_eps_floor_unused_when_weight_is_larger():
    params = make_params([5.0])  # |W| far above eps
    clip_grad_by_weight_norm_(params, clip_factor=1.0, eps=1e-3)
    torch.testing.assert_close(params[0].grad.norm(), params[0].detach().norm())


@pytest.mark.parametrize("clip_value", [0.3, 1.0, 10.0])
def test_per_tensor_matches_torch_on_each_tensor(clip_value):
    params = make_params([0.1, 2.0, 0.4, 3.0], seed=1)
    expected = grads(params)
    for g in expected:
        holder = torch.zeros_like(g, requires_grad=True)
        holder.grad = g  # clipped in place by torch, one tensor at a time
        torch.nn.utils.clip_grad_norm_(holder, clip_value)
    clip_grad_norm_per_tensor_(params, clip_value)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=RTOL, atol=0)


def test_per_tensor_stats_against_hand_count():
    params = make_params([1.0, 1.0, 1.0, 1.0], seed=2)
    norms = [p.grad.norm().item() for p in params]
    clip_value = sorted(norms)[1] + 1e-9  # two tensors above, two below
    stats = clip_grad_norm_per_tensor_(params, clip_value)
    assert stats.fraction_clipped.item() == 0.5
    expected_scale = sum(min(1.0, clip_value / n) for n in norms) / 4
    assert stats.mean_scale.item() == pytest.approx(expected_scale, rel=1e-12)


@pytest.mark.parametrize("clip_value", [0.5, 100.0])
def test_global_matches_torch(clip_value):
    params = make_params([0.1, 2.0, 0.4, 3.0], seed=3)
    reference = [p.detach().clone().requires_grad_() for p in params]
    for r, p in zip(reference, params, strict=True):
        r.grad = p.grad.clone()
    total = torch.nn.utils.clip_grad_norm_(reference, clip_value)
    stats = clip_grad_norm_global_(params, clip_value)
    for p, r in zip(params, reference, strict=True):
        torch.testing.assert_close(p.grad, r.grad, rtol=RTOL, atol=0)
    fired = total.item() > clip_value
    assert stats.fraction_clipped.item() == float(fired)
    expected_scale = clip_value / total.item() if fired else 1.0
    assert stats.mean_scale.item() == pytest.approx(expected_scale, rel=1e-12)


def test_global_leaves_small_gradients_bit_identical():
    params = make_params([0.1, 0.1, 0.1, 0.1])
    before = grads(params)
    clip_grad_norm_global_(params, 1e6)
    assert all(torch.equal(p.grad, g) for p, g in zip(params, before, strict=True))


def member_params(k: int, seed: int = 0) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in [(k, 4, 3), (k, 5)]:
        p = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()
        scales = torch.rand((k,) + (1,) * (len(shape) - 1), generator=gen, dtype=torch.float64)
        p.grad = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 * scales
        params.append(p)
    return params


def _slices(params: list[Tensor], k: int) -> list[Tensor]:
    out = []
    for p in params:
        s = p.detach()[k].clone().requires_grad_()
        s.grad = p.grad[k].clone()
        out.append(s)
    return out


@pytest.mark.parametrize(
    ("clip", "per_member"),
    [
        (clip_grad_by_weight_norm_, torch.tensor([0.05, 0.5, 5.0], dtype=torch.float64)),
        (clip_grad_norm_per_tensor_, torch.tensor([0.5, 2.0, 50.0], dtype=torch.float64)),
        (clip_grad_norm_global_, torch.tensor([0.5, 2.0, 50.0], dtype=torch.float64)),
        (clip_grad_by_weight_norm_, 0.3),
    ],
)
def test_members_equal_separate_calls(clip, per_member):
    k = 3
    params = member_params(k)
    separate = [_slices(params, i) for i in range(k)]
    stats = clip(params, per_member, member_dims=1)
    assert stats.fraction_clipped.shape == stats.mean_scale.shape == (k,)
    for i in range(k):
        value = per_member[i].item() if isinstance(per_member, Tensor) else per_member
        expected = clip(separate[i], value)
        for p, s in zip(params, separate[i], strict=True):
            torch.testing.assert_close(p.grad[i], s.grad, rtol=1e-12, atol=0)
        torch.testing.assert_close(stats.fraction_clipped[i], expected.fraction_clipped)
        torch.testing.assert_close(stats.mean_scale[i], expected.mean_scale)
    if isinstance(per_member, Tensor):  # the case mixes members that clip and members that don't
        assert stats.fraction_clipped[0] > stats.fraction_clipped[-1]


def test_grads_none_are_skipped():
    params = make_params([3.0, 3.0])
    no_grad = torch.randn(3, requires_grad=True)
    stats = clip_grad_by_weight_norm_([params[0], no_grad, params[1]], 1.0)
    assert no_grad.grad is None
    assert stats.fraction_clipped.item() == 1.0  # counted over the two tensors with gradients


@pytest.mark.parametrize(
    "clip", [clip_grad_by_weight_norm_, clip_grad_norm_per_tensor_, clip_grad_norm_global_]
)
def test_no_gradients_at_all(clip):
    assert clip([torch.randn(3, requires_grad=True)], 1.0) == ClipStats(
        torch.tensor(0.0), torch.tensor(1.0)
    )
    stats = clip([torch.randn(4, 3, requires_grad=True)], 1.0, member_dims=1)
    assert torch.equal(stats.fraction_clipped, torch.zeros(4))
    assert torch.equal(stats.mean_scale, torch.ones(4))
    assert clip([], 1.0).mean_scale.item() == 1.0


@pytest.mark.parametrize(
    "clip", [clip_grad_by_weight_norm_, clip_grad_norm_per_tensor_, clip_grad_norm_global_]
)
def test_no_host_sync(clip, monkeypatch):
    params = make_params([0.1, 2.0, 0.4, 3.0])
    member = member_params(2)

    def fail(self):
        raise AssertionError("host sync: Tensor.item called")

    monkeypatch.setattr(torch.Tensor, "item", fail)
    monkeypatch.setattr(torch.Tensor, "tolist", fail)
    clip(params, 0.5)
    clip(member, torch.tensor([0.5, 1.0], dtype=torch.float64), member_dims=1)


@pytest.mark.parametrize("bad", [-1.0, 0.0, math.inf, math.nan])
def test_bad_clip_factor(bad):
    params = make_params([1.0])
    with pytest.raises(
        ValueError, match=f"clip_factor must be a positive finite number, got {bad}"
    ):
        clip_grad_by_weight_norm_(params, bad)


@pytest.mark.parametrize("bad", [-1e-3, 0.0, math.inf])
def test_bad_eps(bad):
    with pytest.raises(ValueError, match=f"eps must be a positive finite number, got {bad}"):
        clip_grad_by_weight_norm_(make_params([1.0]), 0.1, eps=bad)


@pytest.mark.parametrize("clip", [clip_grad_norm_per_tensor_, clip_grad_norm_global_])
@pytest.mark.parametrize("bad", [-2.0, 0.0, math.inf])
def test_bad_clip_value(clip, bad):
    with pytest.raises(ValueError, match=f"clip_value must be a positive finite number, got {bad}"):
        clip(make_params([1.0]), bad)


def test_bad_per_member_values():
    params = member_params(3)
    with pytest.raises(ValueError, match=r"clip_factor must hold positive finite numbers, got \["):
        clip_grad_by_weight_norm_(params, torch.tensor([0.1, -0.1, 0.1]), member_dims=1)
    with pytest.raises(
        ValueError, match=r"one value per member \(shape \(3,\)\), got shape \(2,\)"
    ):
        clip_grad_norm_per_tensor_(params, torch.tensor([0.1, 0.2]), member_dims=1)


def test_non_number_is_a_type_error():
    with pytest.raises(TypeError, match="clip_value must be a positive finite number, got '1'"):
        clip_grad_norm_per_tensor_(make_params([1.0]), "1")


def test_per_member_thresholds_are_checked_again_after_an_in_place_change():
    """A thresholds tensor is checked once while unchanged (a population passes the same one at
    every step); changed in place, it is checked again."""
    grads = torch.ones(2, 3)
    p = torch.zeros(2, 3, requires_grad=True)
    p.grad = grads.clone()
    values = torch.tensor([0.5, 2.0])
    clip_grad_norm_per_tensor_([p], values, member_dims=1)
    values.mul_(-1)  # the same object, now negative
    with pytest.raises(ValueError, match="must hold positive finite numbers"):
        clip_grad_norm_per_tensor_([p], values, member_dims=1)
