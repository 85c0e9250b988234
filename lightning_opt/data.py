"""mnist1d as a LightningDataModule: generated locally, cached as ``.npz``, served from memory.

The data is made with ``mnist1d.data.make_dataset`` (never downloaded, never unpickled) and its
4,000/1,000 train/test split is kept. A stratified validation split is carved out of the 4,000
training examples with its own seed (or, with ``split_seed: per_run``, the run's seed), so
tuning never sees the test set. A cache file with wrong contents is regenerated, and a split
that would come out empty is refused before training.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

CACHE_ENV = "LIGHTNING_OPT_CACHE"
NUM_CLASSES = 10
_CACHE_FORMAT = 1  # bump when the cached arrays change meaning
PER_RUN = "per_run"  # split_seed value: the validation split follows the run's seed


def default_cache_dir() -> Path:
    """``$LIGHTNING_OPT_CACHE``, else ``$XDG_CACHE_HOME/lightning_opt``, else ``~/.cache/lightning_opt``."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lightning_opt"


def generation_args(num_samples: int = 5000, generation_seed: int = 42) -> dict:
    """mnist1d's default generation arguments with our overrides (without its download URL)."""
    from mnist1d.data import get_dataset_args  # imports matplotlib: only when generating

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)
    args.update(num_samples=num_samples, seed=generation_seed)
    return args


def _cache_key(args: dict) -> str:
    blob = json.dumps({"format": _CACHE_FORMAT, **args}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _generate(args: dict) -> dict[str, np.ndarray]:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    # make_dataset reseeds the global `random` and `numpy.random` state; put it back afterwards
    # so generating (or not, on a cache hit) never changes what a seeded run does next.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x": data["x"].astype(np.float32),
        "y": data["y"].astype(np.int64),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.int64),
    }


def _read_cache(path: Path, args: dict) -> dict[str, np.ndarray]:
    with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in ("x", "y", "x_test", "y_test")}
    check_arrays(arrays, args)
    return arrays


def check_arrays(arrays: dict[str, np.ndarray], args: dict | None = None) -> None:
    """Raise ``ValueError`` (one line) unless ``arrays`` look like mnist1d made with ``args``.

    ``x`` and ``x_test``: 2-D float32, finite, one row per label, ``final_seq_length`` columns;
    ``y`` and ``y_test``: 1-D int64 in ``0..9``; with ``args``, ``num_samples`` rows in all
    (mnist1d rounds down to a multiple of 10 classes).
    """
    columns = args["final_seq_length"] if args else arrays["x"].shape[-1]
    for split in ("", "_test"):
        x, y = arrays[f"x{split}"], arrays[f"y{split}"]
        if x.dtype != np.float32 or y.dtype != np.int64:
            raise ValueError(f"x{split}/y{split} are {x.dtype}/{y.dtype}, not float32/int64")
        if x.ndim != 2 or x.shape[1] != columns or y.shape != (len(x),):
            raise ValueError(
                f"x{split} has shape {x.shape} and y{split} {y.shape}, not (n, {columns}) and (n,)"
            )
        if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise ValueError(f"y{split} has labels {y.min()}..{y.max()}, not 0..{NUM_CLASSES - 1}")
        if not np.isfinite(x).all():
            raise ValueError(f"x{split} holds {x.size - np.isfinite(x).sum()} NaN/inf values")
    total = len(arrays["y"]) + len(arrays["y_test"])
    if args and total != args["num_samples"] // NUM_CLASSES * NUM_CLASSES:
        raise ValueError(f"{total} examples in all, not num_samples={args['num_samples']}")


def load_mnist1d(
    num_samples: int = 5000, generation_seed: int = 42, cache_dir: str | Path | None = None
) -> dict[str, np.ndarray]:
    """mnist1d arrays ``x, y, x_test, y_test``, from the cache or generated (and then cached).

    A cache file that is truncated, corrupt, or holds arrays of the wrong shape, dtype, label
    range or with NaN/inf values (``check_arrays``) is reported in one warning line and
    regenerated.
    """
    args = generation_args(num_samples, generation_seed)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"mnist1d-{_cache_key(args)}.npz"
    if path.exists():
        try:
            return _read_cache(path, args)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            reason = " ".join(str(err).split())  # one line, whatever numpy or zipfile said
            warnings.warn(
                f"mnist1d cache {path} is unusable ({type(err).__name__}: {reason}); "
                "regenerating it",
                stacklevel=2,
            )
    arrays = _generate(args)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return arrays


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)``: ``fraction`` of each class held out, chosen with ``seed``."""
    rng = np.random.default_rng(seed)
    held = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        held.append(idx[: round(fraction * len(idx))])
    held_out = np.sort(np.concatenate(held))
    keep = np.setdiff1d(np.arange(len(labels)), held_out)
    return keep, held_out


def check_split_sizes(labels: np.ndarray, val_fraction: float) -> None:
    """Raise ``ValueError`` (one line) if ``stratified_split`` of ``labels`` would leave the
    validation or the training split empty; the sizes do not depend on the seed."""
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    counts = counts[counts > 0]
    held = sum(round(val_fraction * n) for n in counts)
    of = f"{len(labels)} training examples ({counts.min()} to {counts.max()} per class)"
    if held == 0:  # with val_fraction >= 1/smallest class, every class holds out one or more
        raise _empty_split("validation", val_fraction, of, math.ceil(1000 / counts.min()) / 1000)
    if held == len(labels):
        bound = math.floor(1000 * (1 - 1 / counts.min())) / 1000
        raise _empty_split("training", val_fraction, of, bound)


def _check_split_sizes_from_numbers(num_samples: int, val_fraction: float) -> None:
    """What ``check_split_sizes`` finds, where the numbers alone already show it: a class
    has at most ``num_samples // 10`` training examples (mnist1d makes that many a class and
    keeps about 80% of them for training)."""
    largest = num_samples // NUM_CLASSES
    of = f"at most {largest} training examples per class"
    if val_fraction * largest <= 0.5:  # rounds to 0 in every class
        raise _empty_split("validation", val_fraction, of, math.ceil(2000 / largest) / 1000)
    if (1 - val_fraction) * largest < 0.5:  # every class held out whole
        raise _empty_split("training", val_fraction, of, math.floor(1000 - 2000 / largest) / 1000)


def _empty_split(split: str, val_fraction: float, of: str, bound: float) -> ValueError:
    if split == "validation":
        what, op = "rounds to 0 in every class", ">="
    else:
        what, op = "holds out every one", "<="
    return ValueError(
        f"the {split} split is empty: val_fraction {val_fraction} of {of} {what}; "
        f"use --data.val_fraction {op} {bound:g} or more --data.num_samples"
    )


class EpochPermutation:
    """The order of one epoch, a pure function of ``(seed, epoch)``.

    Lightning calls ``set_epoch`` on a loader's ``sampler`` before each epoch, so a run resumed
    from a checkpoint at epoch k sees exactly the batches an uninterrupted run sees.
    """

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=gen)


class PopulationPermutation:
    """The orders of one epoch for several seeds at once: row k is ``EpochPermutation`` of
    ``seeds[k]``, so population member k sees exactly the batches a single run with its seed sees.

    ``seeds`` is kept by reference: a population that drops members updates it in place.
    """

    def __init__(self, n: int, seeds: list[int]) -> None:
        self.n, self.seeds, self.epoch = n, seeds, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> Tensor:
        orders = [EpochPermutation(self.n, seed, shuffle=True) for seed in self.seeds]
        for order in orders:
            order.set_epoch(self.epoch)
        return torch.stack([order.indices() for order in orders])


@dataclass
class MiniBatches:
    """Consecutive minibatches in one Lightning batch: the model takes one optimizer step per
    minibatch, so Lightning's per-batch machinery runs once per chunk instead of once per step.

    ``dim`` is the example dimension: 0, or 1 for a population's ``(members, examples, ...)``.
    """

    x: Tensor
    y: Tensor
    batch_size: int
    dim: int = 0

    def __len__(self) -> int:
        return -(-self.y.shape[self.dim] // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        size, dim = self.batch_size, self.dim
        return zip(self.x.split(size, dim), self.y.split(size, dim), strict=True)


class TensorBatches:
    """Batches sliced from in-memory tensors: no per-sample ``__getitem__`` and no collate.

    With ``steps_per_chunk`` set, each item is a ``MiniBatches`` of that many minibatches
    (``0``: the whole epoch); otherwise each item is one ``(x, y)`` minibatch.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        steps_per_chunk: int | None = None,
    ) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.steps_per_chunk = steps_per_chunk
        self.sampler = EpochPermutation(len(x), seed, shuffle)
        self.batch_sampler = None  # Lightning inspects loaders that have a sampler for this too

    def _chunk_size(self) -> int:
        if self.steps_per_chunk is None:
            return self.batch_size
        return self.batch_size * self.steps_per_chunk or len(self.x)

    def __len__(self) -> int:
        return -(-len(self.x) // self._chunk_size())

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor] | MiniBatches]:
        x, y = self.x, self.y
        if self.sampler.shuffle:
            order = self.sampler.indices()
            x, y = x[order], y[order]  # one gather per epoch; the chunks below are views
        size = self._chunk_size()
        for xs, ys in zip(x.split(size), y.split(size), strict=True):
            yield (xs, ys) if self.steps_per_chunk is None else MiniBatches(xs, ys, self.batch_size)


class PopulationBatches(TensorBatches):
    """Training batches for a population: ``x`` of shape ``(members, batch, features)``.

    Member k's examples follow ``EpochPermutation`` of ``seeds[k]``; with ``steps_per_chunk`` the
    items are ``MiniBatches`` over dimension 1, as in ``TensorBatches``.
    """

    def __init__(
        self, x: Tensor, y: Tensor, batch_size: int, seeds: list[int],
        steps_per_chunk: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(x, y, batch_size, steps_per_chunk=steps_per_chunk)
        self.sampler = PopulationPermutation(len(x), seeds)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor] | MiniBatches]:
        order = self.sampler.indices()
        x, y = self.x[order], self.y[order]  # one gather per epoch for all members
        size = self._chunk_size()
        for xs, ys in zip(x.split(size, 1), y.split(size, 1), strict=True):
            if self.steps_per_chunk is None:
                yield xs, ys
            else:
                yield MiniBatches(xs, ys, self.batch_size, dim=1)


class MNIST1DDataModule(LightningDataModule):
    """mnist1d with train / validation / test splits.

    Args:
        batch_size: training examples per optimizer step.
        eval_batch_size: examples per validation/test batch; ``None`` = the whole split at once.
        val_fraction: share of the 4,000 training examples held out for validation, per class,
            in (0, 1).
        split_seed: seed of the validation split (a non-negative integer): fixed across runs,
            so every seed and every trial sees the same split. ``per_run``: the split follows
            the run's seed (``--seed_everything``, read at ``setup``), so the seeds of a
            comparison also vary the validation split (Bouthillier et al. 2021, "Accounting
            for variance in machine learning benchmarks"); the test split never changes.
        shuffle_seed: seed of the training order; ``None`` = follow the run's seed
            (``--seed_everything``), so a new seed changes the data order but never the split.
        steps_per_chunk: ``null`` (the default) = plain ``(x, y)`` minibatches, one per Lightning
            batch, as in any Lightning project. A number N hands Lightning N minibatches per
            batch (``0``: the whole epoch) and the model steps once per minibatch: the same
            math, faster for a tiny model, but Lightning then counts chunks, not steps, wherever
            it counts batches (progress bar, ``on_train_batch_*`` hooks, ``max_steps``,
            ``limit_train_batches``, ``val_check_interval``, the x-axis of epoch-level logs).
        num_samples: examples generated in total (mnist1d default 5000; 80% train, 20% test).
        generation_seed: mnist1d's generation seed (42 reproduces the published data).
        cache_dir: where generated arrays are cached as ``.npz``; ``None`` = ``$LIGHTNING_OPT_CACHE``
            or ``~/.cache/lightning_opt``.
    """

    def __init__(
        self,
        batch_size: int = 100,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.2,
        split_seed: int | Literal["per_run"] = 0,
        shuffle_seed: int | None = None,
        steps_per_chunk: int | None = None,
        num_samples: int = 5000,
        generation_seed: int = 42,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(
                f"eval_batch_size must be a positive integer or null, got {eval_batch_size}"
            )
        if steps_per_chunk is not None and steps_per_chunk < 0:
            raise ValueError(f"steps_per_chunk must be >= 0 or null, got {steps_per_chunk}")
        if num_samples < 10 * NUM_CLASSES:
            raise ValueError(f"num_samples must be at least {10 * NUM_CLASSES}, got {num_samples}")
        _check_split_sizes_from_numbers(num_samples, val_fraction)  # setup checks the labels
        if split_seed != PER_RUN and (
            isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0
        ):
            raise ValueError(
                f"split_seed must be a non-negative integer or {PER_RUN!r}, got {split_seed!r}"
            )
        self.save_hyperparameters(logger=False)  # the model logs them, flat, with its own
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        #: The seed the current validation split was drawn with (``None`` before ``setup``).
        self.resolved_split_seed: int | None = None
        self._loaded: dict[str, np.ndarray] | None = None
        #: Set by a ``PopulationClassifier`` while it trains: one shuffle seed per member.
        self.population_seeds: list[int] | None = None
        #: Set by tune and compare where nothing can observe it (``runs.chunk_where_invisible``):
        #: whole epochs per Lightning batch, without changing the recorded ``steps_per_chunk``.
        self.chunk_invisibly = False

    @property
    def split_seed_is_per_run(self) -> bool:
        """Whether the validation split follows the run's seed (``split_seed: per_run``)."""
        return self.hparams.split_seed == PER_RUN

    def prepare_data(self) -> None:
        # Generate and cache once, before any process reads it; refuse an empty split now,
        # before any training starts.
        check_split_sizes(self._arrays()["y"], self.hparams.val_fraction)

    def _arrays(self) -> dict[str, np.ndarray]:
        if self._loaded is None:
            hp = self.hparams
            self._loaded = load_mnist1d(hp.num_samples, hp.generation_seed, hp.cache_dir)
        return self._loaded

    def _split_seed(self) -> int:
        if self.split_seed_is_per_run:
            return torch.initial_seed() % 2**31  # the run's seed, as for shuffle_seed=None
        return self.hparams.split_seed

    def setup(self, stage: str | None = None) -> None:
        seed = self._split_seed()
        if self.splits and seed == self.resolved_split_seed:
            return  # one module serves many fits: split again only for a new per-run seed
        arrays = self._arrays()
        check_split_sizes(arrays["y"], self.hparams.val_fraction)
        train_idx, val_idx = stratified_split(arrays["y"], self.hparams.val_fraction, seed)
        self.resolved_split_seed = seed

        def pair(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
            return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(
                np.ascontiguousarray(y)
            )

        self.splits = {
            "train": pair(arrays["x"][train_idx], arrays["y"][train_idx]),
            "val": pair(arrays["x"][val_idx], arrays["y"][val_idx]),
            "test": pair(arrays["x_test"], arrays["y_test"]),
        }

    def _eval_loader(self, split: str) -> TensorBatches:
        x, y = self.splits[split]
        return TensorBatches(x, y, self.hparams.eval_batch_size or len(x))

    def train_dataloader(self) -> TensorBatches:
        x, y = self.splits["train"]
        if self.population_seeds is not None:
            return PopulationBatches(
                x, y, self.hparams.batch_size, self.population_seeds,
                steps_per_chunk=self._steps_per_chunk(),
            )  # fmt: skip
        # Resolved per fit (after the run seeds torch), so one module can serve many seeds.
        seed = self.hparams.shuffle_seed
        seed = torch.initial_seed() % 2**31 if seed is None else seed
        return TensorBatches(
            x, y, self.hparams.batch_size, shuffle=True, seed=seed,
            steps_per_chunk=self._steps_per_chunk(),
        )  # fmt: skip

    def _steps_per_chunk(self) -> int | None:
        return 0 if self.chunk_invisibly else self.hparams.steps_per_chunk

    def val_dataloader(self) -> TensorBatches:
        return self._eval_loader("val")

    def test_dataloader(self) -> TensorBatches:
        return self._eval_loader("test")

    def predict_dataloader(self) -> TensorBatches:
        """The test split, in its stored order: ``predict`` writes one row per example."""
        return self._eval_loader("test")
