import random
import socket
import warnings

import numpy as np
import pytest
import torch

from lightning_opt.data import (
    MNIST1DDataModule,
    TensorBatches,
    check_split_sizes,
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
    with pytest.warns(UserWarning, match="unusable.*regenerating") as record:
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
        ({"split_seed": -1}, "split_seed must be a non-negative integer or 'per_run', got -1"),
        ({"split_seed": "per-run"}, "split_seed must be .* or 'per_run', got 'per-run'"),
        ({"split_seed": True}, "split_seed must be .* or 'per_run', got True"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MNIST1DDataModule(**kwargs)


def _damage(arrays, how):
    arrays = {k: v.copy() for k, v in arrays.items()}
    if how == "label out of range":
        arrays["y"][3] = 10
    elif how == "negative test label":
        arrays["y_test"][0] = -1
    elif how == "NaN input":
        arrays["x"][5, 7] = np.nan
    elif how == "inf test input":
        arrays["x_test"][0, 0] = np.inf
    elif how == "float64 inputs":
        arrays["x"] = arrays["x"].astype(np.float64)
    elif how == "float labels":
        arrays["y"] = arrays["y"].astype(np.float32)
    elif how == "3-D inputs":
        arrays["x"] = arrays["x"][:, None, :]
    elif how == "wrong length":
        arrays["x"] = arrays["x"][:, :39]
    elif how == "labels shorter than inputs":
        arrays["y"] = arrays["y"][:-1]
    elif how == "fewer examples":
        arrays = {k: v[:-10] for k, v in arrays.items()}
    return arrays


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("label out of range", "y has labels 0..10, not 0..9"),
        ("negative test label", "y_test has labels -1..9, not 0..9"),
        ("NaN input", "x holds 1 NaN/inf values"),
        ("inf test input", "x_test holds 1 NaN/inf values"),
        ("float64 inputs", "x/y are float64/int64, not float32/int64"),
        ("float labels", "x/y are float32/float32, not float32/int64"),
        ("3-D inputs", r"x has shape \(400, 1, 40\)"),
        ("wrong length", r"x has shape \(400, 39\) and y \(400,\), not \(n, 40\)"),
        ("labels shorter than inputs", r"x has shape \(400, 40\) and y \(399,\), not"),
        ("fewer examples", "480 examples in all, not num_samples=500"),
    ],
)
def test_cache_with_wrong_contents_warns_once_and_regenerates(tmp_path, damage, reason):
    good = load_mnist1d(SAMPLES, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.npz")
    with open(path, "wb") as fh:  # a well-formed .npz: only its contents are wrong
        np.savez(fh, **_damage(good, damage))
    with pytest.warns(UserWarning, match=rf"unusable \(ValueError: {reason}.*regenerating") as rec:
        again = load_mnist1d(SAMPLES, cache_dir=tmp_path)
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    for key, value in good.items():
        np.testing.assert_array_equal(again[key], value)
        assert again[key].dtype == value.dtype
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired on disk: no warning the next time
        load_mnist1d(SAMPLES, cache_dir=tmp_path)


def _suggested(message: str) -> float:
    return float(message.split("--data.val_fraction ")[1].split()[1])


@pytest.mark.parametrize(
    ("val_fraction", "match"),
    [
        # 400 training examples, 34 to 45 a class: 1.1% rounds to 0 in every class (0.495 at
        # most), although 1.1% of the 50 examples a class could have would round to 1
        (0.011, "the validation split is empty: val_fraction 0.011 of 400 training examples"),
        # 98.95% leaves less than half an example of every class for training
        (0.9895, "the training split is empty: val_fraction 0.9895 of 400 training examples"),
    ],
)
def test_an_empty_split_is_refused_at_setup_with_what_to_change(val_fraction, match, data_cache):
    module = MNIST1DDataModule(
        num_samples=SAMPLES, cache_dir=str(data_cache), val_fraction=val_fraction
    )  # the numbers alone do not show it: the labels do
    with pytest.raises(ValueError, match=match) as info:
        module.prepare_data()  # before any training
    message = str(info.value)
    assert "\n" not in message and "--data.val_fraction" in message
    with pytest.raises(ValueError, match=match):
        module.setup("fit")
    # The value the message suggests gives both splits at least one example of every class.
    fixed = MNIST1DDataModule(
        num_samples=SAMPLES, cache_dir=str(data_cache), val_fraction=_suggested(message)
    )
    fixed.setup("fit")
    assert all(len(fixed.splits[s][1].unique()) == 10 for s in ("train", "val")), message


@pytest.mark.parametrize(
    ("num_samples", "val_fraction", "match"),
    [
        # the default 5,000 samples: at most 500 training examples a class, 0.5 rounds to 0
        (5000, 0.001, "the validation split is empty: val_fraction 0.001 of at most 500"),
        (100, 0.01, "the validation split is empty: val_fraction 0.01 of at most 10"),
        (100, 0.99, "the training split is empty: val_fraction 0.99 of at most 10"),
    ],
)
def test_a_surely_empty_split_is_refused_before_any_data_is_made(
    num_samples, val_fraction, match, tmp_path, data_cache
):
    with pytest.raises(ValueError, match=match) as info:
        MNIST1DDataModule(
            num_samples=num_samples, val_fraction=val_fraction, cache_dir=str(tmp_path / "c")
        )
    assert not (tmp_path / "c").exists()  # from the numbers alone
    assert "\n" not in str(info.value)
    if num_samples == 100:  # cheap to check: the suggestion works
        fixed = MNIST1DDataModule(
            num_samples=100, val_fraction=_suggested(str(info.value)), cache_dir=str(data_cache)
        )
        fixed.setup("fit")
        assert len(fixed.splits["train"][1]) and len(fixed.splits["val"][1])


def test_empty_split_sizes_follow_the_per_class_rounding():
    # The default 5,000 samples: 4,000 training examples, 400 a class. 0.001 * 400 = 0.4 rounds
    # to 0 in every class, although 0.001 * 4000 = 4 examples overall.
    labels = np.repeat(np.arange(10), 400)
    with pytest.raises(ValueError, match=r"validation split is empty: val_fraction 0\.001 of 4000"):
        check_split_sizes(labels, 0.001)
    check_split_sizes(labels, 0.002)  # 0.8 rounds to 1 per class
    _, held = stratified_split(labels, 0.002, seed=0)
    assert len(held) == 10
    with pytest.raises(ValueError, match=r"training split is empty: val_fraction 0\.999"):
        check_split_sizes(labels, 0.999)  # 399.6 rounds to all 400


def _val_and_test(module, seed):
    torch.manual_seed(seed)  # what seed_everything does for a run
    module.setup("fit")
    return module.splits["val"][0].clone(), module.splits["test"][0].clone()


def test_per_run_split_seed_follows_the_run_seed(data_cache):
    per_run = MNIST1DDataModule(
        num_samples=SAMPLES, cache_dir=str(data_cache), split_seed="per_run"
    )
    fixed = MNIST1DDataModule(num_samples=SAMPLES, cache_dir=str(data_cache), split_seed=0)
    assert per_run.split_seed_is_per_run and not fixed.split_seed_is_per_run
    # One module serves several seeds, as in compare: it splits again when the seed changes.
    val1, test1 = _val_and_test(per_run, 1)
    assert per_run.resolved_split_seed == 1
    val2, test2 = _val_and_test(per_run, 2)
    assert per_run.resolved_split_seed == 2
    again, _ = _val_and_test(per_run, 1)
    assert not torch.equal(val1, val2) and torch.equal(val1, again)
    fixed1, fixed_test = _val_and_test(fixed, 1)
    fixed2, _ = _val_and_test(fixed, 2)
    assert torch.equal(fixed1, fixed2) and fixed.resolved_split_seed == 0
    assert torch.equal(test1, test2) and torch.equal(test1, fixed_test)  # never moves
    # Whatever the seed, the split stays stratified and partitions the training examples.
    x, _ = per_run.splits["train"]
    assert len(x) + len(per_run.splits["val"][0]) == 400
    assert np.bincount(per_run.splits["val"][1].numpy(), minlength=10).min() > 0


def test_split_seed_accepts_an_integer_or_per_run_on_the_command_line():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MNIST1DDataModule, "data")
    assert parser.parse_args(["--data.split_seed=per_run"]).data.split_seed == "per_run"
    assert parser.parse_args(["--data.split_seed=7"]).data.split_seed == 7
    with pytest.raises(Exception, match="split_seed"):
        parser.parse_args(["--data.split_seed=sometimes"])


# -- dataset variants: mnist1d's generator arguments -----------------------------------------


def test_the_default_variant_is_the_published_data_and_its_cache_key(tmp_path):
    from lightning_opt.data import VARIANT_DEFAULTS

    load_mnist1d(SAMPLES, cache_dir=tmp_path)
    load_mnist1d(SAMPLES, cache_dir=tmp_path, **VARIANT_DEFAULTS)  # spelled out: the same file
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_a_variant_is_keyed_into_the_cache_and_generated_by_mnist1d(tmp_path):
    from mnist1d.data import get_dataset_args, make_dataset

    variant = {"iid_noise_scale": 0.1, "max_translation": 20, "final_seq_length": 60}
    ours = load_mnist1d(SAMPLES, cache_dir=tmp_path, **variant)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    load_mnist1d(SAMPLES, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    args = get_dataset_args()
    args.num_samples = SAMPLES
    for name, value in variant.items():
        setattr(args, name, value)
    reference = make_dataset(args)
    assert ours["x"].shape == (400, 60)
    np.testing.assert_allclose(ours["x"], reference["x"], rtol=1e-6)


def test_shuffled_positions_permute_every_example_the_same_way(tmp_path):
    plain = load_mnist1d(SAMPLES, cache_dir=tmp_path)["x"]
    shuffled = load_mnist1d(SAMPLES, cache_dir=tmp_path, shuffle_positions=True)["x"]
    assert not np.allclose(plain, shuffled)
    # The same examples, positions moved by one fixed permutation (found from the first rows).
    order = [int(np.argmin(np.abs(plain[:8] - shuffled[:8, [j]]).sum(0))) for j in range(40)]
    assert sorted(order) == list(range(40))
    np.testing.assert_allclose(plain[:, order], shuffled, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("variant", "match"),
    [
        ({"max_translation": 0}, "--data.max_translation must be an integer >= 1, got 0"),
        ({"max_translation": 100}, "at most template_len \\+ padding\\[1\\] = 72"),
        ({"padding": [10, 5]}, "--data.padding must be \\[low, high\\]"),
        ({"iid_noise_scale": -1.0}, "--data.iid_noise_scale must be a finite number >= 0"),
        ({"scale_coeff": 2.0}, "--data.scale_coeff must be in \\[0, 2\\)"),
        ({"final_seq_length": 1}, "--data.final_seq_length must be an integer >= 2"),
        ({"template_len": 0}, "--data.template_len must be an integer >= 1"),
    ],
)
def test_a_variant_out_of_range_is_refused_in_one_line(variant, match):
    with pytest.raises(ValueError, match=match):
        MNIST1DDataModule(num_samples=SAMPLES, **variant)


def test_a_variant_is_recorded_with_the_runs_settings(tiny_fit_args, tmp_path):
    import yaml

    from lightning_opt.cli.main import cli_main

    cli_main(["fit", *tiny_fit_args, "--trainer.max_epochs=1", "--data.shuffle_positions=true",
              "--data.shear_scale=0.5", "--model.net=cnn"])  # fmt: skip
    (hparams,) = (tmp_path / "logs").rglob("hparams.yaml")
    recorded = yaml.safe_load(hparams.read_text())
    assert recorded["data/shuffle_positions"] is True and recorded["data/shear_scale"] == 0.5
    assert recorded["net"] == "lightning_opt.models.cnn.ConvNet"
    assert recorded["net/channels"] == 25
