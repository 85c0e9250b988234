"""Population training: member k of a ``PopulationClassifier`` is the single-model fit of its seed.

Checks exactness against single runs (every optimizer, with and without clipping, float64 and
float32), per-member hyperparameters, independence of members, dropping (non-finite or asked
for), bad input, the per-member optimizers against torch's, and the per-member data orders.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import MNIST1D, one_thread, quiet_trainer
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import Logger
from torch import Tensor

from lightning_opt.clipping.callbacks import (
    FixedNormClipping,
    GradientClippingCallback,
    WeightNormClipping,
)
from lightning_opt.data import MiniBatches, MNIST1DDataModule, PopulationBatches, TensorBatches
from lightning_opt.experiments.finals import EpochHistory
from lightning_opt.optim.gnw_adam import GNWAdam
from lightning_opt.optim.sgd import MemberSGD
from lightning_opt.population import PopulationClassifier
from lightning_opt.training.classifier import MNIST1DClassifier, NonFiniteLossError

# The clipping callbacks log their stats with self.log, and these runs have no logger.
pytestmark = pytest.mark.filterwarnings("ignore:You called `self.log")

SAMPLES = 1000  # 640 training examples (7 steps of 100 per epoch) and 160 for validation
F64 = torch.float64
# Learning rates whose training loss is NaN within the first epoch in float64 (SGD at the third
# step; GNW-Adam, whose steps are about lr in size, at the second), whatever the seed.
HUGE_LR = 1e100
GNW_HUGE_LR = 1e200


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these matrices are tiny, and on a busy 2-core machine two threads
    make each fit several times slower. Every run in this file uses the same setting."""
    with one_thread():
        yield


@pytest.fixture
def data(data_cache: Path) -> MNIST1DDataModule:
    return MNIST1DDataModule(num_samples=SAMPLES, cache_dir=str(data_cache))


def _trainer(epochs: int, precision: str = "64-true", callbacks: list | None = None) -> Trainer:
    return quiet_trainer(epochs, precision, callbacks)


def fit_population(
    data: MNIST1DDataModule,
    seeds: list[int],
    optimizer: str,
    member_hparams: dict[str, list] | None = None,
    epochs: int = 3,
    precision: str = "64-true",
    callbacks: list | None = None,
    **shared,
) -> PopulationClassifier:
    pop = PopulationClassifier(
        seeds,
        **MNIST1D,
        optimizer={"class_path": optimizer, "init_args": shared},
        member_hparams=member_hparams,
    )
    _trainer(epochs, precision, callbacks).fit(pop, datamodule=data)
    return pop


def fit_single(
    data: MNIST1DDataModule,
    seed: int,
    optimizer: str,
    hparams: dict,
    epochs: int,
    precision: str = "64-true",
    clipper: GradientClippingCallback | None = None,
) -> list[float]:
    """The per-epoch validation losses of ``fit --seed_everything seed``."""
    seed_everything(seed, verbose=False)
    model = MNIST1DClassifier(**MNIST1D, optimizer={"class_path": optimizer, "init_args": hparams})
    history = EpochHistory()
    _trainer(epochs, precision, [history, *([clipper] if clipper else [])]).fit(
        model, datamodule=data
    )
    return history.val_loss


def member(values: dict[str, list], i: int) -> dict:
    return {name: v[i] for name, v in values.items()}


def assert_close(actual: list[float], expected: list[float], rel: float) -> None:
    assert len(actual) == len(expected)
    for epoch, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert math.isfinite(a), f"epoch {epoch}: {a}"
        assert abs(a - e) <= rel * abs(e), f"epoch {epoch}: {a} vs {e} ({abs(a - e) / abs(e):.2e})"


# -- member k is the single-model fit of its seed -------------------------------------------

# (callback class, its kwargs, per-member values): the callback's own threshold is one that never
# fires, so the clipping seen comes from the per-member values alone; each of those fires.
CLIPPING = {
    "none": None,
    "weight_norm": (WeightNormClipping, {"clip_factor": 1e6}, {"clip_factor": [0.02, 0.2]}),
    "per_tensor": (FixedNormClipping, {"clip_value": 1e6}, {"clip_value": [0.05, 0.3]}),
    "global": (
        FixedNormClipping,
        {"clip_value": 1e6, "mode": "global"},
        {"clip_value": [0.1, 0.5]},
    ),
}
SEEDS = [3, 11]
LRS = {"adam": [0.01, 0.003], "adamw": [0.01, 0.003], "sgd": [0.05, 0.2], "gnw": [0.01, 0.003]}


def check_members_match_single_runs(
    data: MNIST1DDataModule,
    optimizer: str,
    clipping: str,
    epochs: int,
    precision: str,
    rel: float,
    member_hparams: dict[str, list] | None = None,
) -> PopulationClassifier:
    member_hparams = dict(member_hparams or {"lr": LRS[optimizer]})
    clip = CLIPPING[clipping]
    clip_values: dict[str, list] = {}
    callbacks = []
    if clip is not None:
        cls, kwargs, clip_values = clip
        callbacks.append(cls(**kwargs))
    pop = fit_population(
        data, SEEDS, optimizer, {**member_hparams, **clip_values}, epochs, precision, callbacks
    )
    assert data.population_seeds is None  # the next single fit shuffles with its own seed
    if clip is not None:
        assert min(callbacks[0].clip_rates()) > 0  # every member's threshold takes effect
    for i, seed in enumerate(SEEDS):
        clipper = None
        if clip is not None:
            clipper = cls(**{**kwargs, **member(clip_values, i)})
        single = fit_single(
            data, seed, optimizer, member(member_hparams, i), epochs, precision, clipper
        )
        assert_close(pop.history[i]["val/loss"], single, rel)
    return pop


@pytest.mark.parametrize("clipping", list(CLIPPING))
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "gnw"])
def test_members_reproduce_single_runs_in_float64(data, optimizer, clipping):
    check_members_match_single_runs(data, optimizer, clipping, 10, "64-true", 1e-6)


@pytest.mark.parametrize(("optimizer", "clipping"), [("adam", "none"), ("gnw", "weight_norm")])
def test_members_reproduce_single_runs_in_float32(data, optimizer, clipping):
    check_members_match_single_runs(data, optimizer, clipping, 3, "32-true", 1e-3)


def test_members_reproduce_single_runs_with_one_minibatch_per_lightning_batch(data):
    data.hparams.steps_per_chunk = None  # (x, y) batches of shape (K, batch, ...)
    check_members_match_single_runs(data, "gnw", "weight_norm", 3, "64-true", 1e-6)


@pytest.mark.parametrize(
    ("optimizer", "member_hparams"),
    [
        ("adam", {"betas": [(0.9, 0.999), (0.8, 0.99)]}),
        ("adamw", {"weight_decay": [0.01, 0.1], "lr": [0.01, 0.003]}),
        ("sgd", {"momentum": [0.9, 0.5]}),
        ("sgd", {"momentum": [0.0, 0.9], "weight_decay": [0.0, 0.01]}),
        ("gnw", {"gamma": [1.0, 0.1]}),
    ],
)
def test_per_member_hyperparameters_reproduce_single_runs(data, optimizer, member_hparams):
    check_members_match_single_runs(data, optimizer, "none", 3, "64-true", 1e-6, member_hparams)


def test_per_member_eps_reproduces_single_runs(data):
    check_members_match_single_runs(data, "adam", "none", 3, "64-true", 1e-6, {"eps": [1e-8, 1e-3]})


# -- members are independent ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("optimizer", "clipping"), [("adam", "none"), ("sgd", "per_tensor"), ("gnw", "weight_norm")]
)
def test_changing_one_members_lr_leaves_the_others_bit_identical(data, optimizer, clipping):
    seeds = [1, 2, 3]
    a, b = LRS[optimizer]
    clip = CLIPPING[clipping]
    clip_values = {} if clip is None else {k: [v[0], v[1], v[0]] for k, v in clip[2].items()}
    runs = []
    for lrs in ([a, b, b], [a, 3 * b, b]):  # per-member lr tensors in both runs
        callbacks = [] if clip is None else [clip[0](**clip[1])]
        runs.append(
            fit_population(
                data, seeds, optimizer, {"lr": lrs, **clip_values}, 4, callbacks=callbacks
            )
        )
    same, changed = runs
    assert same.history[1]["val/loss"] != changed.history[1]["val/loss"]
    for i in (0, 2):
        assert same.history[i] == changed.history[i]
        for p, q in zip(same.net.parameters(), changed.net.parameters(), strict=True):
            assert torch.equal(p[i], q[i])


@pytest.mark.parametrize("optimizer", ["sgd", "gnw"])
def test_per_member_lr_equal_or_not_leaves_the_others_bit_identical(data, optimizer):
    a = LRS[optimizer][0]
    same = fit_population(data, [1, 2, 3], optimizer, {"lr": [a, a, a]}, 2)
    changed = fit_population(data, [1, 2, 3], optimizer, {"lr": [a, 3 * a, a]}, 2)
    for i in (0, 2):
        for p, q in zip(same.net.parameters(), changed.net.parameters(), strict=True):
            assert torch.equal(p[i], q[i])


# -- dropping members -------------------------------------------------------------------------


def test_a_non_finite_member_is_dropped_and_the_others_train_on_unchanged(data):
    epochs = 4
    lrs = [0.05, HUGE_LR, 0.2]
    pop = fit_population(data, [1, 2, 3], "sgd", {"lr": lrs}, epochs, momentum=0.0)
    assert list(pop.dropped) == [1]
    assert "non-finite" in pop.dropped[1] and "(epoch 0)" in pop.dropped[1]
    assert pop.member_ids == [0, 2]
    assert pop.trainer.current_epoch == epochs  # the survivors ran to max_epochs
    assert len(pop.history[1]["val/loss"]) == 1  # validated once, at the end of epoch 0
    assert pop.net[0].weight.shape[0] == 2

    reference = fit_population(data, [1, 3], "sgd", {"lr": [0.05, 0.2]}, epochs, momentum=0.0)
    for i, j in ((0, 0), (2, 1)):
        assert len(pop.history[i]["val/loss"]) == epochs
        assert_close(pop.history[i]["val/loss"], reference.history[j]["val/loss"], 1e-12)


def test_a_non_finite_member_is_dropped_under_gnw_with_clipping(data):
    clip = {"clip_factor": [0.02, 0.02]}
    pop = fit_population(
        data, [1, 2], "gnw", {"lr": [0.01, GNW_HUGE_LR], **clip}, 3,
        callbacks=[WeightNormClipping(1e6)],
    )  # fmt: skip
    assert list(pop.dropped) == [1] and "non-finite" in pop.dropped[1]
    alone = fit_population(
        data, [1], "gnw", {"lr": [0.01], "clip_factor": [0.02]}, 3,
        callbacks=[WeightNormClipping(1e6)],
    )  # fmt: skip
    assert_close(pop.history[0]["val/loss"], alone.history[0]["val/loss"], 1e-12)


def test_every_member_non_finite_raises(data):
    with pytest.raises(NonFiniteLossError, match="every member's training loss"):
        fit_population(data, [1, 2], "sgd", {"lr": [HUGE_LR, HUGE_LR]}, 3)


class DropAt(Callback):
    """Asks the population to drop ``members`` after validating epoch ``epoch``."""

    def __init__(self, epoch: int, members: dict[int, str]) -> None:
        self.epoch, self.members = epoch, members

    def on_validation_end(self, trainer: Trainer, pl_module: PopulationClassifier) -> None:
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            pl_module.drop_members(self.members)


def test_drop_members_narrows_the_population_and_leaves_survivors_unchanged(data):
    seeds, epochs = [1, 2, 3], 5
    hparams = {"lr": [0.01, 0.003, 0.02], "clip_factor": [0.02, 0.05, 0.2]}
    clipper = WeightNormClipping(1e6)
    pop = fit_population(
        data, seeds, "gnw", hparams, epochs, callbacks=[clipper, DropAt(1, {1: "test"})]
    )
    whole = fit_population(data, seeds, "gnw", hparams, epochs, callbacks=[WeightNormClipping(1e6)])

    assert pop.dropped == {1: "test"}
    assert pop.member_ids == [0, 2] and pop.seeds == [1, 3]
    assert len(pop.history[1]["val/loss"]) == 2  # epochs 0 and 1
    assert pop.history[1]["val/loss"] == whole.history[1]["val/loss"][:2]
    for i in (0, 2):
        assert_close(pop.history[i]["val/loss"], whole.history[i]["val/loss"], 1e-12)
    for p, q in zip(pop.net.parameters(), whole.net.parameters(), strict=True):
        assert p.shape[0] == 2
        torch.testing.assert_close(p, q[[0, 2]], rtol=1e-12, atol=1e-14)

    optimizer = pop.trainer.optimizers[0]
    assert optimizer.members == 2
    state = optimizer.state[pop.net[0].weight]
    assert state["exp_avg"].shape == state["exp_avg_sq"].shape == pop.net[0].weight.shape
    group = optimizer.param_groups[0]
    torch.testing.assert_close(group["lr"], torch.tensor([0.01, 0.02], dtype=F64))
    assert len(clipper.clip_rates()) == 2
    torch.testing.assert_close(
        pop.clipping_overrides()["clip_factor"], torch.tensor([0.02, 0.2], dtype=F64)
    )


def test_dropping_every_member_by_request_stops_without_error(data):
    pop = fit_population(data, [1, 2], "adam", None, 5, callbacks=[DropAt(0, {0: "a", 1: "b"})])
    assert pop.dropped == {0: "a", 1: "b"} and pop.member_ids == []
    assert pop.trainer.current_epoch == 1


def test_select_members_keeps_the_chosen_members_state(data):
    pop = fit_population(data, [1, 2, 3], "sgd", {"momentum": [0.9, 0.5, 0.0]}, 1)
    weights = pop.net[0].weight.detach().clone()
    buffer = pop.trainer.optimizers[0].state[pop.net[0].weight]["momentum_buffer"].clone()
    pop.select_members([2, 0])
    assert pop.member_ids == [2, 0]
    assert torch.equal(pop.net[0].weight, weights[[2, 0]])
    optimizer = pop.trainer.optimizers[0]
    assert torch.equal(optimizer.state[pop.net[0].weight]["momentum_buffer"], buffer[[2, 0]])
    assert optimizer.param_groups[0]["momentum"].tolist() == [0.0, 0.9]


def test_select_members_before_fit():
    pop = PopulationClassifier([1, 2, 3], **MNIST1D)
    weight = pop.net[0].weight.detach().clone()
    pop.select_members([0, 2])
    assert pop.member_ids == [0, 2]
    assert torch.equal(pop.net[0].weight, weight[[0, 2]])


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seeds": []}, "seeds must be a non-empty list of integers"),
        ({"seeds": [1, 2.5]}, "seeds must be a non-empty list of integers"),
        ({"seeds": [0, -1]}, "seeds must be a non-empty list of integers from 0 to 4294967295"),
        (
            {"member_hparams": {"momentum": ["a", 0.5]}},
            r"member_hparams\['momentum'\]: Adam takes no argument 'momentum'",
        ),
        (
            {"member_hparams": {"lr": [0.1]}},
            r"member_hparams\['lr'\] must hold one value per member \(2\)",
        ),
        ({"member_hparams": {"lr": 0.1}}, r"must hold one value per member"),
        ({"member_hparams": {"lr": [0.1, -1.0]}}, "Invalid learning rate: -1.0"),
        ({"member_hparams": {"betas": [(0.9, 0.99), (0.9, 1.5)]}}, "Invalid beta parameter"),
        ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
        ({"optimizer": "torch.optim.NoSuch"}, "cannot import 'torch.optim.NoSuch'"),
        (
            {"net": {"class_path": "mlp", "init_args": {"activation": "swish"}}},
            "unknown activation",
        ),
        (
            {"net": "torch.nn.GRU"},
            r"GRU maps a batch of 2 signals of length 40 to tuple, not \(2, 10\)",
        ),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    kwargs = {"seeds": [1, 2], **kwargs}
    with pytest.raises(ValueError, match=match):
        PopulationClassifier(**MNIST1D, **kwargs)


class NoPopulationAdam(torch.optim.Adam):
    supports_population = False


def test_an_optimizer_without_population_support_is_rejected():
    with pytest.raises(ValueError, match="NoPopulationAdam declares supports_population = False"):
        PopulationClassifier([1, 2], **MNIST1D, optimizer=f"{__name__}.NoPopulationAdam")


@pytest.mark.parametrize(
    ("member_hparams", "callbacks"),
    [
        ({"clip_factor": [0.1, 0.2]}, []),
        ({"clip_factor": [0.1, 0.2]}, [FixedNormClipping(1.0)]),
        ({"clip_value": [0.1, 0.2]}, [WeightNormClipping(1.0)]),
    ],
)
def test_per_member_clipping_without_its_callback_fails_at_fit(data, member_hparams, callbacks):
    name = next(iter(member_hparams))
    with pytest.raises(ValueError, match=f"member_hparams {name}: Adam takes no such argument"):
        fit_population(data, [1, 2], "adam", member_hparams, 1, callbacks=callbacks)


def test_a_bad_per_member_clipping_value_fails_before_training(data):
    with pytest.raises(ValueError, match=r"clip_factor must be a positive finite number, got 0\.0"):
        fit_population(
            data, [1, 2], "adam", {"clip_factor": [0.1, 0.0]}, 1, callbacks=[WeightNormClipping(1)]
        )


def test_a_plain_dataloader_is_rejected():
    x, y = torch.randn(20, 40), torch.randint(0, 10, (20,))
    loader = TensorBatches(x, y, 10)
    with pytest.raises(ValueError, match="needs a datamodule with population_seeds"):
        _trainer(1).fit(PopulationClassifier([1, 2], **MNIST1D), train_dataloaders=loader)


# -- the per-member optimizers against torch's, outside Lightning ------------------------------

K, STEPS = 3, 20


def _run_members(make_member, make_population, seed: int = 0) -> None:
    """Steps a population optimizer and K single-member ones on the same random gradients."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (4,)]
    stacked = [torch.randn(K, *s, generator=gen, dtype=F64, requires_grad=True) for s in shapes]
    singles = [[p[k].detach().clone().requires_grad_() for p in stacked] for k in range(K)]
    opt = make_population(stacked)
    single_opts = [make_member(ps, k) for k, ps in enumerate(singles)]
    for _ in range(STEPS):
        grads = [torch.randn(p.shape, generator=gen, dtype=F64) for p in stacked]
        for p, g in zip(stacked, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for k, (ps, o) in enumerate(zip(singles, single_opts, strict=True)):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g[k].clone()
            o.step()
    for k, ps in enumerate(singles):
        for p, q in zip(stacked, ps, strict=True):
            torch.testing.assert_close(p[k], q, rtol=1e-12, atol=1e-14)


LR = torch.tensor([1e-2, 3e-3, 1e-3], dtype=F64)
WD = torch.tensor([0.0, 0.1, 0.01], dtype=F64)
BETA1 = torch.tensor([0.9, 0.8, 0.0], dtype=F64)
BETA2 = torch.tensor([0.999, 0.99, 0.9], dtype=F64)


@pytest.mark.parametrize("per_member_betas", [False, True])
def test_gnw_adam_without_gamma_is_adam_per_member(per_member_betas):
    betas = (BETA1, BETA2) if per_member_betas else (0.9, 0.999)

    def single(params, k):
        b = (float(BETA1[k]), float(BETA2[k])) if per_member_betas else betas
        return torch.optim.Adam(params, lr=float(LR[k]), betas=b, weight_decay=float(WD[k]))

    _run_members(
        single,
        lambda ps: GNWAdam(ps, lr=LR, betas=betas, weight_decay=WD, gamma=None, member_dims=1),
    )


def test_gnw_adam_decoupled_without_gamma_is_adamw_per_member():
    def single(params, k):
        return torch.optim.AdamW(params, lr=float(LR[k]), weight_decay=float(WD[k]))

    _run_members(
        single,
        lambda ps: GNWAdam(
            ps, lr=LR, weight_decay=WD, gamma=None, decoupled_weight_decay=True, member_dims=1
        ),
    )


def test_gnw_adam_with_gamma_is_single_gnw_adam_per_member():
    gamma = torch.tensor([1.0, 0.1, 10.0], dtype=F64)

    def single(params, k):
        return GNWAdam(params, lr=float(LR[k]), gamma=float(gamma[k]), weight_decay=float(WD[k]))

    _run_members(single, lambda ps: GNWAdam(ps, lr=LR, gamma=gamma, weight_decay=WD, member_dims=1))


@pytest.mark.parametrize("per_member", [False, True])
def test_member_sgd_is_torch_sgd_per_member(per_member):
    momentum = torch.tensor([0.9, 0.0, 0.5], dtype=F64)

    def single(params, k):
        if not per_member:
            return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=0.01)
        return torch.optim.SGD(
            params, lr=float(LR[k]), momentum=float(momentum[k]), weight_decay=float(WD[k])
        )

    def stacked(params):
        if not per_member:
            return MemberSGD(params, lr=0.05, momentum=0.9, weight_decay=0.01, member_dims=1)
        return MemberSGD(params, lr=LR, momentum=momentum, weight_decay=WD, member_dims=1)

    _run_members(single, stacked)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, "Invalid learning rate"),
        ({"lr": -0.1}, "Invalid learning rate"),
        ({"lr": torch.tensor([0.1, 0.0, 0.1])}, "Invalid learning rate"),
        ({"momentum": 1.0}, "Invalid momentum value"),
        ({"momentum": -0.1}, "Invalid momentum value"),
        ({"momentum": torch.tensor([0.9, 1.0, 0.0])}, "Invalid momentum value"),
        ({"weight_decay": -1e-3}, "Invalid weight_decay value"),
        ({"lr": torch.tensor([0.1, 0.2])}, r"Invalid learning rate.*shape \(3,\)"),
        ({"lr": math.nan}, "Invalid learning rate"),
    ],
)
def test_member_sgd_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MemberSGD([torch.zeros(K, 2, requires_grad=True)], member_dims=1, **kwargs)


# -- data orders ------------------------------------------------------------------------------


def _order(batches) -> Tensor:
    """The example indices in the order ``batches`` yields them (``x`` holds each index)."""
    chunks = []
    for item in batches:
        if isinstance(item, MiniBatches):
            assert item.dim == (1 if isinstance(batches, PopulationBatches) else 0)
            steps = list(item)
            assert len(steps) == len(item)
            chunks += [x[..., 0] for x, _ in steps]
        else:
            chunks.append(item[0][..., 0])
    return torch.cat(chunks, -1).long()


@pytest.mark.parametrize("steps_per_chunk", [None, 0, 2])
def test_population_batches_follow_each_seeds_single_order(steps_per_chunk):
    n, batch_size, seeds = 53, 10, [7, 0, 2**31 - 1]
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1).expand(n, 3).contiguous()
    y = torch.arange(n)
    pop = PopulationBatches(x, y, batch_size, seeds, steps_per_chunk=steps_per_chunk)
    for epoch in (0, 1, 5):
        pop.sampler.set_epoch(epoch)
        rows = _order(pop)
        assert rows.shape == (len(seeds), n)
        for k, seed in enumerate(seeds):
            single = TensorBatches(x, y, batch_size, True, seed, steps_per_chunk)
            single.sampler.set_epoch(epoch)
            assert len(single) == len(pop)
            assert torch.equal(rows[k], _order(single))
        first = next(iter(pop))
        xs, ys = first if steps_per_chunk is None else next(iter(first))
        assert xs.shape == (len(seeds), batch_size, 3) and ys.shape == (len(seeds), batch_size)
        assert torch.equal(xs[..., 0].long(), ys)  # labels travel with their examples
    assert not torch.equal(rows[0], rows[1])


def test_population_batches_follow_dropped_seeds_in_place():
    seeds = [1, 2, 3]
    x, y = torch.arange(20.0).unsqueeze(1), torch.arange(20)
    batches = PopulationBatches(x, y, 5, seeds)
    before = _order(batches)
    seeds[:] = [seeds[0], seeds[2]]  # what select_members does to the population's data seeds
    assert torch.equal(_order(batches), before[[0, 2]])


def test_resume_after_a_member_was_dropped_equals_an_uninterrupted_run(data, tmp_path):
    """A checkpoint saved after member 1 went non-finite resumes with the two survivors, their
    optimizer state and history, and ends where an uninterrupted run ends."""
    seeds, hparams = [1, 2, 3], {"lr": [0.05, HUGE_LR, 0.2]}

    def build() -> PopulationClassifier:
        sgd = {"class_path": "sgd", "init_args": {"momentum": 0.9}}
        return PopulationClassifier(seeds, **MNIST1D, optimizer=sgd, member_hparams=hparams)

    # float32: with 64-true Lightning loads a checkpoint into the module before converting it to
    # float64, so a float64 resume is rounded through float32 (single models alike).
    straight = build()
    _trainer(4, "32-true").fit(straight, datamodule=data)

    first = build()
    trainer = _trainer(2, "32-true")
    trainer.fit(first, datamodule=data)
    ckpt = tmp_path / "two.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = build()
    _trainer(4, "32-true").fit(resumed, datamodule=data, ckpt_path=ckpt)

    assert resumed.member_ids == straight.member_ids == [0, 2]
    assert 1 in resumed.dropped and "non-finite" in resumed.dropped[1]
    for member in (0, 2):
        assert resumed.history[member] == straight.history[member]  # 4 epochs, bit for bit
    for p, q in zip(resumed.net.parameters(), straight.net.parameters(), strict=True):
        assert torch.equal(p, q)

    other = PopulationClassifier([1, 2, 4], **MNIST1D, optimizer="sgd", member_hparams=hparams)
    with pytest.raises(ValueError, match="the checkpoint is of a population with seeds"):
        _trainer(4).fit(other, datamodule=data, ckpt_path=ckpt)


# -- members of several optimizers in one population ----------------------------------------

# Each group: (optimizer, lr_scheduler, seeds, member_hparams). Adam and GNW-Adam take their
# stacked fast paths over their slices, SGD with Nesterov and NAdam with a step-interval
# schedule one instance per member.
WARMUP = {"class_path": "lightning_opt.optim.schedulers.WarmupCosine",
          "init_args": {"total_steps": 35, "warmup_fraction": 0.2}}  # fmt: skip
MIXED = [
    ({"class_path": "adam"}, None, [1, 2], {"lr": [0.01, 0.003]}),
    ({"class_path": "gnw", "init_args": {"gamma": 1.0}}, None, [3, 4, 5],
     {"lr": [0.01, 0.02, 0.005]}),
    ({"class_path": "torch.optim.SGD", "init_args": {"momentum": 0.9, "nesterov": True}}, None,
     [6], {"lr": [0.05]}),
    ({"class_path": "torch.optim.NAdam"}, WARMUP, [7, 8], {"lr": [0.01, 0.002]}),
]  # fmt: skip


def _mixed(callbacks: list, epochs: int = 5) -> PopulationClassifier:
    groups = [
        {"optimizer": opt, "lr_scheduler": sched, "size": len(seeds), "member_hparams": hp,
         "lr_interval": "step"}
        for opt, sched, seeds, hp in MIXED
    ]  # fmt: skip
    pop = PopulationClassifier(
        [s for *_, seeds, _ in MIXED for s in seeds], **MNIST1D, optimizer=MIXED[0][0],
        member_groups=groups, lr_interval="step",
    )  # fmt: skip
    return pop


def test_members_of_several_optimizers_train_as_their_own_populations(data):
    epochs = 5
    pop = _mixed([])
    # Drop a member inside a stacked group, and later a whole group (its part goes).
    drops = [DropAt(1, {3: "test"}), DropAt(2, {0: "test", 1: "test"})]
    _trainer(epochs, callbacks=drops).fit(pop, datamodule=data)
    optimizer = pop.trainer.optimizers[0]
    assert optimizer.sizes == [2, 1, 2]  # gnw (one dropped), sgd, nadam
    assert isinstance(optimizer.members[0], GNWAdam)

    start = 0
    for opt, sched, seeds, hparams in MIXED:
        alone = PopulationClassifier(
            seeds, **MNIST1D, optimizer=opt, lr_scheduler=sched, lr_interval="step",
            member_hparams=hparams,
        )  # fmt: skip
        _trainer(epochs).fit(alone, datamodule=data)
        for i in range(len(seeds)):
            mixed, own = pop.history[start + i], alone.history[i]
            n = len(mixed["val/loss"])
            assert n == {0: 3, 1: 3, 3: 2}.get(start + i, epochs)
            assert_close(mixed["val/loss"], own["val/loss"][:n], 1e-12)
            # The effective step size where the member's optimizer keeps one (GNW-Adam's).
            assert ("optim/effective_lr" in mixed) == (opt["class_path"] == "gnw")
            if "optim/effective_lr" in mixed:
                assert_close(mixed["optim/effective_lr"], own["optim/effective_lr"][:n], 1e-9)
            assert_close(mixed["optim/lr"], own["optim/lr"][:n], 1e-6)
        start += len(seeds)

    # Each member's own checkpoint is the single run of its optimizer and schedule.
    checkpoint = pop.member_checkpoint(6)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["optimizer"]["class_path"] == "torch.optim.NAdam"
    assert hparams["optimizer"]["init_args"]["lr"] == 0.01
    assert hparams["lr_scheduler"]["class_path"] == WARMUP["class_path"]
    gnw = pop.member_checkpoint(2)["hyper_parameters"]
    assert gnw["optimizer"]["class_path"].endswith("GNWAdam") and gnw["lr_scheduler"] is None
    model = MNIST1DClassifier(**hparams)
    model.load_state_dict(checkpoint["state_dict"])


def test_member_groups_are_checked_at_construction():
    groups = [{"optimizer": "adam", "size": 1}, {"optimizer": "gnw", "size": 1}]
    with pytest.raises(ValueError, match="member_groups hold 2 members; seeds give 3"):
        PopulationClassifier([1, 2, 3], **MNIST1D, member_groups=groups)
    with pytest.raises(ValueError, match="must be the first group's"):
        PopulationClassifier([1, 2], **MNIST1D, optimizer="sgd", member_groups=groups)
    with pytest.raises(ValueError, match="give each group's member_hparams in its entry"):
        PopulationClassifier([1, 2], **MNIST1D, member_groups=groups,
                             member_hparams={"lr": [0.1, 0.2]})  # fmt: skip
    clip = [{"optimizer": "adam", "size": 1, "member_hparams": {"clip_factor": [0.1]}},
            {"optimizer": "gnw", "size": 1}]  # fmt: skip
    with pytest.raises(ValueError, match="different clipping settings per member"):
        PopulationClassifier([1, 2], **MNIST1D, member_groups=clip)


def test_members_of_different_budgets_each_end_at_their_own_last_epoch(data):
    seeds, epochs, lrs = [1, 2, 3], [2, 4, 3], [0.01, 0.003, 0.02]
    pop = PopulationClassifier(seeds, **MNIST1D, optimizer="gnw", member_hparams={"lr": lrs},
                               member_epochs=epochs)  # fmt: skip
    _trainer(max(epochs)).fit(pop, datamodule=data)
    assert pop.finished == {0: 2, 2: 3} and pop.dropped == {} and pop.member_ids == [1]
    for member, (seed, lr, n) in enumerate(zip(seeds, lrs, epochs, strict=True)):
        alone = fit_population(data, [seed], "gnw", {"lr": [lr]}, n)
        assert_close(pop.history[member]["val/loss"], alone.history[0]["val/loss"], 1e-12)
        checkpoint = pop.finished_checkpoints.get(member) or pop.member_checkpoint(member)
        assert checkpoint["epoch"] == n and checkpoint["hyper_parameters"]["optimizer"][
            "init_args"]["lr"] == lr  # fmt: skip
        for name, weight in alone.member_checkpoint(0)["state_dict"].items():
            torch.testing.assert_close(
                checkpoint["state_dict"][name], weight, rtol=1e-12, atol=1e-14
            )


class MemoryLogger(Logger):
    """Keeps what a run logs: its hyperparameters and every metrics dict."""

    def __init__(self) -> None:
        super().__init__()
        self.params: dict = {}
        self.metrics: list[dict] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self.params.update(params)

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append(dict(metrics))

    def logged(self) -> set[str]:
        return {name for record in self.metrics for name in record}


WNCLIP = "lightning_opt.callbacks.WeightNormClipping"
FIXED = "lightning_opt.callbacks.FixedNormClipping"
VALUE = "test_bring_your_own.ValueClip"  # a rule that clips one model at a time
ADAM, SGD_N = (
    "adam",
    {"class_path": "torch.optim.SGD", "init_args": {"momentum": 0.9, "nesterov": True}},
)
RULED = [  # optimizer, clipping rule, seeds, member_hparams
    (ADAM, {"class_path": WNCLIP, "init_args": {"clip_factor": 1.0}}, [1, 2], {"lr": [0.01, 0.01], "clip_factor": [0.05, 0.5]}),
    (ADAM, None, [3], {"lr": [0.01]}),
    (SGD_N, {"class_path": FIXED, "init_args": {"clip_value": 0.5}}, [4], {"lr": [0.05]}),
    (ADAM, {"class_path": WNCLIP, "init_args": {"clip_factor": 0.2}}, [5], {"lr": [0.003]}),
    (ADAM, {"class_path": VALUE}, [6, 7], {"lr": [0.01, 0.01], "limit": [0.003, 0.03]}),
]  # fmt: skip


def test_members_of_several_clipping_rules_clip_as_their_own_runs(data):
    import test_bring_your_own

    from lightning_opt.runs.build import instantiate

    epochs = 4
    groups = [{"optimizer": opt, "clipping": rule, "size": len(seeds), "member_hparams": hp}
              for opt, rule, seeds, hp in RULED]  # fmt: skip
    seeds = [s for *_, group_seeds, _ in RULED for s in group_seeds]
    pop = PopulationClassifier(seeds, **MNIST1D, member_groups=groups)
    # Two groups of one rule (their per-member settings aside) share one instance.
    wnclip, fixed, value = pop.clipping_rules
    assert wnclip.members == [0, 1, 5 - 1] and fixed.members == [3] and value.members == [5, 6]
    assert isinstance(value, test_bring_your_own.ValueClip) and not value.stacked
    pop.member_loggers = [MemoryLogger() for _ in seeds]
    loggers = list(pop.member_loggers)
    # Drop a member of the shared rule, then the fixed-clipping group whole.
    drops = [DropAt(1, {1: "test"}), DropAt(2, {3: "test"})]
    trainer = _trainer(epochs, callbacks=drops)
    trainer.fit(pop, datamodule=data)
    clippers = [c for c in trainer.callbacks if isinstance(c, GradientClippingCallback)]
    assert clippers == [wnclip, fixed, value]  # the population's, in the trainer's callbacks
    assert wnclip.members == [0, 4] and fixed.members == []

    start = 0
    for opt, rule, group_seeds, hparams in RULED:
        callbacks = [] if rule is None else [instantiate(rule)]
        alone = PopulationClassifier(group_seeds, **MNIST1D, optimizer=opt,
                                     member_hparams=hparams)  # fmt: skip
        _trainer(epochs, callbacks=callbacks).fit(alone, datamodule=data)
        for i in range(len(group_seeds)):
            member = start + i
            mixed, own = pop.history[member], alone.history[i]
            n = len(mixed["val/loss"])
            assert n == {1: 2, 3: 3}.get(member, epochs)
            assert_close(mixed["val/loss"], own["val/loss"][:n], 1e-12)
            assert_close(mixed["optim/grad_norm_after_clip"],
                         own["optim/grad_norm_after_clip"][:n], 1e-9)  # fmt: skip
            logged, params = loggers[member].logged(), loggers[member].params
            # Each member logs its own rule's statistics and settings, and no other's.
            assert ("clip/fraction_clipped" in logged) == (rule is not None)
            assert params.get("clipping") == (None if rule is None else type(callbacks[0]).__name__)
            if rule is not None:  # each epoch's clip rate, the dropped members' too
                fractions = pop.member_rule[member].member_fraction_history(member)
                assert_close(fractions, callbacks[0].member_fraction_history(i)[:n], 1e-12)
            if member in pop.member_ids:
                own_rule, position = pop.rule_of(member)
                assert (own_rule is None) == (rule is None)
                if own_rule is not None:
                    rate = callbacks[0].clip_rates()[i]
                    assert own_rule.clip_rates()[position] == pytest.approx(rate, rel=1e-12)
                    assert 0 < rate <= 1
        start += len(group_seeds)
    assert loggers[4].params["clip/clip_factor"] == 0.2 and "clip/limit" not in loggers[4].params
    assert loggers[0].params["clip/clip_factor"] == 0.05
    assert (
        loggers[3].params["clip/clip_value"] == 0.5 and "clip/clip_factor" not in loggers[3].params
    )
    # A member's checkpoint is its own run's model (the rule is a trainer callback, as in fit).
    MNIST1DClassifier(**pop.member_checkpoint(4)["hyper_parameters"])


def test_clipping_rules_of_member_groups_are_checked_at_construction():
    def build(*groups):
        return PopulationClassifier(list(range(len(groups))), **MNIST1D,
                                    member_groups=[{"size": 1, "optimizer": "adam", **g}
                                                   for g in groups])  # fmt: skip

    with pytest.raises(ValueError, match="clip_factor must be a positive finite number"):
        build({"clipping": {"class_path": WNCLIP}, "member_hparams": {"clip_factor": [-1.0]}},
              {"clipping": None})  # fmt: skip
    with pytest.raises(ValueError, match="a member group without a clipping rule has no clip"):
        build({"clipping": None, "member_hparams": {"clip_factor": [0.1]}},
              {"clipping": {"class_path": WNCLIP}})  # fmt: skip
    with pytest.raises(ValueError, match="nor its clipping rule FixedNormClipping takes it"):
        build({"clipping": {"class_path": FIXED}, "member_hparams": {"clip_factor": [0.1]}},
              {"clipping": None})  # fmt: skip
    with pytest.raises(ValueError, match="is not a GradientClippingCallback"):
        build({"clipping": {"class_path": "lightning_opt.experiments.finals.EpochHistory"}}, {})
    with pytest.raises(ValueError, match=r"clipping WeightNormClipping: .*unexpected keyword"):
        build({"clipping": {"class_path": WNCLIP, "init_args": {"clip_value": 1.0}}}, {})
    pop = build({"clipping": {"class_path": WNCLIP, "init_args": {"clip_factor": 0.1}}}, {})
    with pytest.raises(ValueError, match="clip with FixedNormClipping and the member groups"):
        pop.check_clipping([FixedNormClipping(1.0)])
    pop.check_clipping([WeightNormClipping(3.0)])  # replaced by the population's own
