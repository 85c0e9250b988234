"""Batches sliced from in-memory tensors, in an order that is a pure function of (seed, epoch),
for one run or for every member of a population at once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


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
