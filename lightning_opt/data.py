"""mnist1d as a LightningDataModule: generated locally, cached as ``.npz``, served from memory.

The data is made with ``mnist1d.data.make_dataset`` (never downloaded, never unpickled) and its
4,000/1,000 train/test split is kept. A stratified validation split is carved out of the 4,000
training examples with its own seed, so tuning never sees the test set.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

CACHE_ENV = "LIGHTNING_OPT_CACHE"
NUM_CLASSES = 10
_CACHE_FORMAT = 1  # bump when the cached arrays change meaning


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


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in ("x", "y", "x_test", "y_test")}
    if len(arrays["x"]) != len(arrays["y"]) or len(arrays["x_test"]) != len(arrays["y_test"]):
        raise ValueError("array lengths disagree")
    return arrays


def load_mnist1d(
    num_samples: int = 5000, generation_seed: int = 42, cache_dir: str | Path | None = None
) -> dict[str, np.ndarray]:
    """mnist1d arrays ``x, y, x_test, y_test``, from the cache or generated (and then cached).

    A truncated or corrupt cache file is reported in one warning line and regenerated.
    """
    args = generation_args(num_samples, generation_seed)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"mnist1d-{_cache_key(args)}.npz"
    if path.exists():
        try:
            return _read_cache(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            warnings.warn(
                f"mnist1d cache {path} is unreadable ({type(err).__name__}: {err}); regenerating it",
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
        split_seed: seed of the validation split; fixed across runs so every seed and every
            trial sees the same split.
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
        split_seed: int = 0,
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
        self.save_hyperparameters(logger=False)  # the model logs them, flat, with its own
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        #: Set by a ``PopulationClassifier`` while it trains: one shuffle seed per member.
        self.population_seeds: list[int] | None = None

    def prepare_data(self) -> None:
        self._arrays()  # generate and cache once, before any process reads it

    def _arrays(self) -> dict[str, np.ndarray]:
        hp = self.hparams
        return load_mnist1d(hp.num_samples, hp.generation_seed, hp.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        arrays = self._arrays()
        train_idx, val_idx = stratified_split(
            arrays["y"], self.hparams.val_fraction, self.hparams.split_seed
        )

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
                steps_per_chunk=self.hparams.steps_per_chunk,
            )  # fmt: skip
        # Resolved per fit (after the run seeds torch), so one module can serve many seeds.
        seed = self.hparams.shuffle_seed
        seed = torch.initial_seed() % 2**31 if seed is None else seed
        return TensorBatches(
            x, y, self.hparams.batch_size, shuffle=True, seed=seed,
            steps_per_chunk=self.hparams.steps_per_chunk,
        )  # fmt: skip

    def val_dataloader(self) -> TensorBatches:
        return self._eval_loader("val")

    def test_dataloader(self) -> TensorBatches:
        return self._eval_loader("test")

    def predict_dataloader(self) -> TensorBatches:
        """The test split, in its stored order: ``predict`` writes one row per example."""
        return self._eval_loader("test")
