import random
import socket
import warnings

import numpy as np
import pytest
import torch

from lightning_opt.data import (
    MNIST1DDataModule,
    TensorBatches,
    load_mnist1d,
    stratified_split,
)

SAMPLES = 500


@pytest.fixture
def dm(data_cache):
    module = MNIST1DDataModule(num_samples=SAMPLES, cache_dir=str(data_cache), shuffle_seed=3)
    module.prepare_data()
    module.setup()
    return module


def test_shapes_and_split_sizes(dm):
    x, y = dm.splits["train"]
    n_val = len(dm.splits["val"][1])
    assert abs(n_val - 80) <= 5 and len(x) + n_val == 400  # 20% of each class held out
    assert x.shape[1] == 40 and x.dtype == torch.float32 and y.dtype == torch.int64
    assert dm.splits["test"][0].shape == (100, 40)  # mnist1d's own 80/20 split is kept


def test_validation_split_is_disjoint_and_stratified():
    labels = np.repeat(np.arange(10), 40)
    np.random.default_rng(0).shuffle(labels)
    keep, held = stratified_split(labels, 0.25, seed=1)
    assert np.intersect1d(keep, held).size == 0
    assert np.union1d(keep, held).tolist() == list(range(len(labels)))
    assert np.bincount(labels[held], minlength=10).tolist() == [10] * 10
    again, _ = stratified_split(labels, 0.25, seed=1)
    other, _ = stratified_split(labels, 0.25, seed=2)
    assert np.array_equal(keep, again) and not np.array_equal(keep, other)


def test_splits_partition_the_generated_training_set(dm, data_cache):
    arrays = load_mnist1d(SAMPLES, cache_dir=data_cache)
    rows = {tuple(r) for r in arrays["x"].round(6).tolist()}
    train = {tuple(r) for r in dm.splits["train"][0].numpy().round(6).tolist()}
    val = {tuple(r) for r in dm.splits["val"][0].numpy().round(6).tolist()}
    assert not train & val and train | val == rows


def test_generation_matches_mnist1d_and_restores_global_rng(tmp_path):
    from mnist1d.data import get_dataset_args, make_dataset

    random.seed(7)
    np.random.seed(7)
    expected_py, expected_np = random.random(), np.random.rand()
    random.seed(7)
    np.random.seed(7)
    ours = load_mnist1d(SAMPLES, cache_dir=tmp_path)
    assert (random.random(), np.random.rand()) == (expected_py, expected_np)
    args = get_dataset_args()
    args.num_samples = SAMPLES
    reference = make_dataset(args)
    np.testing.assert_allclose(ours["x"], reference["x"], rtol=1e-6)
    np.testing.assert_array_equal(ours["y_test"], reference["y_test"])


def test_generation_never_touches_the_network(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access during data generation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    arrays = load_mnist1d(SAMPLES, cache_dir=tmp_path)
    assert len(arrays["x"]) == 400
    assert list(tmp_path.glob("*.npz")) and not list(tmp_path.glob("*.pkl"))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_cache_warns_once_and_regenerates(tmp_path, damage):
    good = load_mnist1d(SAMPLES, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.npz")
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2] if damage == "truncate" else b"not an npz file")
    with pytest.warns(UserWarning, match="unreadable.*regenerating") as record:
        again = load_mnist1d(SAMPLES, cache_dir=tmp_path)
    assert len(record) == 1
    np.testing.assert_array_equal(again["x"], good["x"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: no warning the next time
        load_mnist1d(SAMPLES, cache_dir=tmp_path)


def test_cache_is_keyed_by_generation_arguments(tmp_path):
    load_mnist1d(SAMPLES, cache_dir=tmp_path)
    load_mnist1d(SAMPLES, generation_seed=1, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def _epoch_orders(loader, epochs):
    orders = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        orders.append(torch.cat([y for _, y in loader]))  # (x, y) minibatches by default
    return orders


def test_training_order_is_reproducible_per_seed_and_epoch(dm, data_cache):
    loader = dm.train_dataloader()
    first = _epoch_orders(loader, [0, 1])
    assert not torch.equal(first[0], first[1])  # a new order each epoch
    twin = MNIST1DDataModule(num_samples=SAMPLES, cache_dir=str(data_cache), shuffle_seed=3)
    twin.setup()
    assert all(
        torch.equal(a, b)
        for a, b in zip(first, _epoch_orders(twin.train_dataloader(), [0, 1]), strict=True)
    )
    other = MNIST1DDataModule(num_samples=SAMPLES, cache_dir=str(data_cache), shuffle_seed=4)
    other.setup()
    assert not torch.equal(first[0], _epoch_orders(other.train_dataloader(), [0])[0])
    assert torch.equal(
        other.splits["val"][1], dm.splits["val"][1]
    )  # the seed never moves the split


def test_shuffle_seed_none_follows_the_run_seed(data_cache):
    orders = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        module = MNIST1DDataModule(num_samples=SAMPLES, cache_dir=str(data_cache))
        module.setup()
        orders.append(_epoch_orders(module.train_dataloader(), [0])[0])
    assert torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], orders[2])


def test_batches_cover_every_example_once():
    x = torch.arange(23, dtype=torch.float32).unsqueeze(1)
    loader = TensorBatches(x, torch.arange(23), batch_size=5, shuffle=True, seed=0)
    batches = list(loader)
    assert len(loader) == len(batches) == 5 and len(batches[-1][0]) == 3
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(23))
    plain = TensorBatches(x, torch.arange(23), batch_size=5)
    assert torch.cat([b[1] for b in plain]).tolist() == list(range(23))


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_chunks_hold_the_same_minibatches_as_plain_batches(steps):
    x = torch.randn(23, 2)
    plain = TensorBatches(x, torch.arange(23), batch_size=5, shuffle=True, seed=1)
    chunked = TensorBatches(x, torch.arange(23), 5, shuffle=True, seed=1, steps_per_chunk=steps)
    assert len(chunked) == (1 if steps == 0 else -(-5 // steps))
    flat = [mb for chunk in chunked for mb in chunk]
    assert len(flat) == len(plain) == 5
    for (xa, ya), (xb, yb) in zip(plain, flat, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_eval_loaders_default_to_one_batch(dm):
    assert len(dm.val_dataloader()) == 1 and len(dm.test_dataloader()) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 0.0}, r"val_fraction must be in \(0, 1\), got 0.0"),
        ({"val_fraction": 1.5}, r"val_fraction must be in \(0, 1\), got 1.5"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"eval_batch_size": -1}, "eval_batch_size must be a positive integer or null, got -1"),
        ({"num_samples": 20}, "num_samples must be at least 100, got 20"),
        ({"steps_per_chunk": -1}, "steps_per_chunk must be >= 0 or null, got -1"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MNIST1DDataModule(**kwargs)
