"""GNW-Adam against a hand-written reference step, torch's Adam, closed forms and K single runs."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import Tensor, nn

from lightning_opt.optim.gnw_adam import GNWAdam

F64 = torch.float64


def reference_run(
    groups: list[dict], grads_per_step: list[list[list[Tensor]]], betas=(0.9, 0.999), eps=1e-8
) -> list[list[Tensor]]:
    """GNW-Adam written out per tensor from the formula: ``groups[i]`` holds ``params`` (initial
    values) and ``lr``, ``gamma``, ``weight_decay``; ``grads_per_step[t][i][j]`` is the raw gradient
    of param j of group i at step t. Returns the final params."""
    beta1, beta2 = betas
    params = [[p.clone() for p in g["params"]] for g in groups]
    m = [[torch.zeros_like(p) for p in ps] for ps in params]
    v = [[torch.zeros_like(p) for p in ps] for ps in params]
    for t, grads in enumerate(grads_per_step, start=1):
        norm = math.sqrt(sum(float((g**2).sum()) for gs in grads for g in gs))
        for i, group in enumerate(groups):
            size = group["lr"] * group["gamma"] / (group["gamma"] + norm)
            for j, g in enumerate(grads[i]):
                g = g + group["weight_decay"] * params[i][j]
                m[i][j] = beta1 * m[i][j] + (1 - beta1) * g
                v[i][j] = beta2 * v[i][j] + (1 - beta2) * g * g
                m_hat = m[i][j] / (1 - beta1**t)
                v_hat = v[i][j] / (1 - beta2**t)
                params[i][j] = params[i][j] - size * m_hat / (v_hat.sqrt() + eps)
    return params


def test_matches_reference_over_varied_gradient_scales_and_two_groups():
    gen = torch.Generator().manual_seed(0)
    shapes = [[(4, 3), (3,)], [(2, 5), (5,), (1,)]]
    hypers = [
        {"lr": 1e-2, "gamma": 1.0, "weight_decay": 0.0},
        {"lr": 3e-3, "gamma": 0.25, "weight_decay": 0.05},
    ]
    groups = [
        {"params": [torch.randn(s, generator=gen, dtype=F64) for s in ss], **h}
        for ss, h in zip(shapes, hypers, strict=True)
    ]
    steps = 50
    scales = torch.logspace(-3, 3, steps, dtype=F64)[torch.randperm(steps, generator=gen)]
    grads_per_step = [
        [[torch.randn(s, generator=gen, dtype=F64) * scale for s in ss] for ss in shapes]
        for scale in scales
    ]

    live = [{**g, "params": [p.clone().requires_grad_() for p in g["params"]]} for g in groups]
    opt = GNWAdam(live, lr=1.0, gamma=9.0)  # group values override these defaults
    for grads in grads_per_step:
        for group, gs in zip(live, grads, strict=True):
            for p, g in zip(group["params"], gs, strict=True):
                p.grad = g.clone()
        opt.step()

    expected = reference_run(groups, grads_per_step)
    for group, want in zip(live, expected, strict=True):
        for p, w in zip(group["params"], want, strict=True):
            torch.testing.assert_close(p.detach(), w, rtol=1e-10, atol=1e-13)
            assert not torch.equal(p.detach(), groups[0]["params"][0])  # it moved


def tiny_regression(seed: int = 0, dtype=torch.float32) -> tuple[nn.Module, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=gen, dtype=dtype)
    y = torch.sin(x @ torch.randn(4, 1, generator=gen, dtype=dtype))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)
    return model, x, y


def train(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, steps: int) -> Tensor:
    def closure() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    for _ in range(steps):
        loss = opt.step(closure)
    return loss.detach()


def test_huge_gamma_is_adam():
    model, x, y = tiny_regression(dtype=F64)
    twin, _, _ = tiny_regression(dtype=F64)
    kwargs = {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.01}
    train(model, GNWAdam(model.parameters(), gamma=1e30, **kwargs), x, y, 100)
    train(twin, torch.optim.Adam(twin.parameters(), **kwargs), x, y, 100)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_step_calls_the_closure_first_and_returns_its_loss():
    model, x, y = tiny_regression()
    opt = GNWAdam(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def closure() -> Tensor:
        assert all(p.grad is None for p in model.parameters())  # nothing read before the closure
        assert torch.is_grad_enabled()  # step runs under no_grad; the closure must not
        calls.append(1)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert len(calls) == 1
    assert loss is not None and loss.requires_grad
    assert opt.last_grad_norm is not None and opt.last_grad_norm > 0
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_effective_lr_and_first_step_closed_form():
    a = torch.zeros(2, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    frozen = torch.ones(3, requires_grad=True)  # no grad: skipped, and not in ||g||
    opt = GNWAdam([{"params": [a, frozen]}, {"params": [b], "lr": 0.5, "gamma": 3.0}], lr=0.1)
    assert opt.effective_lr() is None and opt.last_grad_norm is None
    a.grad = torch.tensor([3.0, -4.0])
    b.grad = torch.tensor([12.0])  # ||g|| = sqrt(9 + 16 + 144) = 13
    opt.step()
    assert opt.last_grad_norm.shape == () and opt.last_grad_norm.item() == pytest.approx(13.0)
    assert opt.effective_lr(0).item() == pytest.approx(0.1 / (1 + 13))
    assert opt.effective_lr(1).item() == pytest.approx(0.5 * 3 / (3 + 13))
    # Adam's first step moves each coordinate by the step size against the gradient's sign.
    assert a.tolist() == pytest.approx([-0.1 / 14, 0.1 / 14], rel=1e-6)
    assert b.tolist() == pytest.approx([-1.5 / 16], rel=1e-6)
    assert torch.equal(frozen, torch.ones(3)) and frozen not in opt.state


def test_state_matches_adam_and_resumes_bit_exactly():
    model, x, y = tiny_regression()
    opt = GNWAdam(model.parameters(), lr=1e-2, weight_decay=1e-3, gamma=0.5)
    train(model, opt, x, y, 10)
    state = opt.state[next(model.parameters())]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
    assert state["step"].shape == () and state["step"].dtype == torch.float32
    assert state["step"].item() == 10

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    straight = train(model, opt, x, y, 10)

    buffer.seek(0)
    checkpoint = torch.load(buffer)
    resumed, _, _ = tiny_regression(seed=1)  # different init, overwritten by the checkpoint
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt = GNWAdam(resumed.parameters())  # hyperparameters come from the checkpoint
    resumed_opt.load_state_dict(checkpoint["opt"])
    again = train(resumed, resumed_opt, x, y, 10)

    assert torch.equal(straight, again)
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_lr_scheduler_drives_the_effective_lr():
    model, x, y = tiny_regression()
    opt = GNWAdam(model.parameters(), lr=0.1, gamma=2.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for epoch in range(5):
        train(model, opt, x, y, 1)
        norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
        lr = 0.1 * 0.5 ** (epoch // 2)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr)
        torch.testing.assert_close(opt.effective_lr(), lr * 2 / (2 + norm))
        sched.step()


def test_step_never_syncs_the_host(monkeypatch: pytest.MonkeyPatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("host sync in step")

    k = 3
    params = [torch.randn(k, 4, 2, requires_grad=True), torch.randn(k, 2, requires_grad=True)]
    opts = [
        GNWAdam([params[0]], weight_decay=0.1),
        GNWAdam(
            [params[1]],
            lr=torch.tensor([1e-3, 1e-2, 1e-1]),
            gamma=torch.tensor([0.5, 1.0, 2.0]),
            weight_decay=torch.tensor([0.0, 0.1, 0.2]),
            member_dims=1,
        ),
    ]
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in params]
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for opt in opts:
        opt.step()
        opt.step()
        opt.effective_lr()
    monkeypatch.undo()
    assert not torch.equal(params[0], before[0]) and not torch.equal(params[1], before[1])


def test_members_equal_separate_runs():
    k, steps = 3, 30
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, generator=gen, dtype=F64)
    y = torch.randn(32, 2, generator=gen, dtype=F64)
    w0 = torch.randn(k, 5, 2, generator=gen, dtype=F64)
    b0 = torch.randn(k, 2, generator=gen, dtype=F64)
    lr = torch.tensor([1e-3, 1e-2, 5e-2], dtype=F64)
    gamma = torch.tensor([0.1, 1.0, 10.0], dtype=F64)
    weight_decay = torch.tensor([0.0, 0.01, 0.1], dtype=F64)

    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    opt = GNWAdam([w, b], lr=lr, gamma=gamma, weight_decay=weight_decay, member_dims=1)
    for _ in range(steps):
        opt.zero_grad()
        # One loss per member; their sum gives each member its own gradient.
        ((torch.einsum("ni,kio->kno", x, w) + b[:, None] - y) ** 2).mean(
            dim=(1, 2)
        ).sum().backward()
        opt.step()
    assert opt.last_grad_norm.shape == (k,)
    assert opt.effective_lr().shape == (k,)

    for m in range(k):
        wm, bm = w0[m].clone().requires_grad_(), b0[m].clone().requires_grad_()
        hypers = {"lr": lr[m].item(), "gamma": gamma[m].item()}
        single = GNWAdam([wm, bm], weight_decay=weight_decay[m].item(), **hypers)
        for _ in range(steps):
            single.zero_grad()
            ((x @ wm + bm - y) ** 2).mean().backward()
            single.step()
        torch.testing.assert_close(w[m], wm, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(b[m], bm, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(opt.effective_lr()[m], single.effective_lr())


def test_lowers_the_loss():
    model, x, y = tiny_regression()
    opt = GNWAdam(model.parameters(), lr=0.02)
    first = nn.functional.mse_loss(model(x), y).item()
    last = train(model, opt, x, y, 200).item()
    assert last < 0.2 * first


def one() -> list[Tensor]:
    return [torch.zeros(2, requires_grad=True)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1.0}, r"Invalid learning rate: -1.0 \(must be > 0\)"),
        ({"lr": 0.0}, r"Invalid learning rate: 0.0 \(must be > 0\)"),
        ({"lr": math.inf}, r"Invalid learning rate: inf \(must be a finite number > 0\)"),
        ({"lr": math.nan}, r"Invalid learning rate: nan"),
        ({"lr": "0.1"}, r"Invalid learning rate: '0.1'"),
        ({"lr": True}, r"Invalid learning rate: True"),
        ({"eps": 0.0}, r"Invalid epsilon value: 0.0 \(must be > 0\)"),
        (
            {"betas": (1.0, 0.999)},
            r"Invalid beta parameter at index 0: 1.0 \(must be in \[0, 1\)\)",
        ),
        ({"betas": (0.9, -0.1)}, r"Invalid beta parameter at index 1: -0.1"),
        ({"betas": (0.9,)}, r"Invalid betas: \(0.9,\) \(must be a pair"),
        ({"weight_decay": -1e-3}, r"Invalid weight_decay value: -0.001 \(must be >= 0\)"),
        ({"gamma": 0.0}, r"Invalid gamma value: 0.0 \(must be > 0\)"),
        ({"gamma": -math.inf}, r"Invalid gamma value: -inf"),
        ({"member_dims": 2}, r"Invalid member_dims: 2 \(must be 0 or 1\)"),
        ({"lr": torch.tensor([0.1, 0.2])}, r"learning rate.*shape \(2,\).*need member_dims=1"),
        ({"gamma": torch.tensor(-1.0)}, r"Invalid gamma value: -1.0 \(must be finite and > 0\)"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        GNWAdam(one(), **kwargs)


@pytest.mark.parametrize(
    ("params", "kwargs", "match"),
    [
        ([torch.zeros(3, 2)], {"lr": torch.tensor([0.1, 0.2])}, r"shape \(2,\).*shape \(3,\)"),
        ([torch.zeros(3, 2)], {"lr": torch.tensor([0.5, -0.5, 0.5])}, r"\[0.5, -0.5, 0.5\]"),
        ([torch.zeros(2)], {"gamma": torch.tensor([1.0, math.inf])}, r"gamma value: \[1.0, inf\]"),
        ([torch.zeros(2)], {"weight_decay": torch.tensor([1, 2])}, r"torch.int64 tensor"),
        ([torch.zeros(())], {}, r"leading member dimension"),
        ([torch.zeros(3, 2), torch.zeros(2)], {}, r"same leading size K.*got 2 and 3"),
    ],
)
def test_invalid_member_arguments(params: list[Tensor], kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        GNWAdam([p.requires_grad_() for p in params], member_dims=1, **kwargs)


def test_invalid_group_value_and_sparse_gradient():
    with pytest.raises(ValueError, match=r"Invalid learning rate: -0.5"):
        GNWAdam([{"params": one()}, {"params": one(), "lr": -0.5}])
    opt = GNWAdam(one())
    with pytest.raises(ValueError, match=r"Invalid weight_decay value: -1"):
        opt.add_param_group({"params": one(), "weight_decay": -1})
    assert len(opt.param_groups) == 1  # the bad group was not kept

    emb = nn.Embedding(5, 2, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        GNWAdam(emb.parameters()).step()
