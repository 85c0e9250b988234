"""mnist1d as a LightningDataModule: generated locally, cached as ``.npz``, served from memory.

The data is made with ``mnist1d.data.make_dataset`` (never downloaded, never unpickled) and its
4,000/1,000 train/test split is kept. A stratified validation split is carved out of the 4,000
training examples with its own seed (or, with ``split_seed: per_run``, the run's seed), so
tuning never sees the test set. A cache file with wrong contents is regenerated, and a split
that would come out empty is refused before training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from lightning_opt.core.names import check_limit
from lightning_opt.data.batches import PopulationBatches, TensorBatches
from lightning_opt.data.generation import (
    NUM_CLASSES,
    PER_RUN,
    VARIANT_DEFAULTS,
    check_variant,
    load_mnist1d,
)
from lightning_opt.data.splits import (
    check_split_sizes,
    check_split_sizes_from_numbers,
    stratified_split,
)


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
        template_len, padding, scale_coeff, max_translation, corr_noise_scale,
            iid_noise_scale, shear_scale, final_seq_length: mnist1d's generator arguments
            (defaults: the published data's). A variant is a workload: every one is part of the
            cache key and of each run's recorded settings; ``final_seq_length`` is the signal
            length the net sees (``model.input_size`` follows it).
        shuffle_positions: one fixed permutation of the signal's positions for every example
            (mnist1d's ``shuffle_seq``, drawn from ``generation_seed``): the paper's test of
            which models use spatial structure (CNN 94% -> 56%, MLP unchanged).
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
        template_len: int = 12,
        padding: list[int] = [36, 60],  # noqa: B006  (LightningCLI shows the default in --help)
        scale_coeff: float = 0.4,
        max_translation: int = 48,
        corr_noise_scale: float = 0.25,
        iid_noise_scale: float = 0.02,
        shear_scale: float = 0.75,
        shuffle_positions: bool = False,
        final_seq_length: int = 40,
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
        check_limit("num_samples", num_samples, "data.num_samples")
        check_limit("final_seq_length", final_seq_length, "data.final_seq_length")
        check_split_sizes_from_numbers(num_samples, val_fraction)  # setup checks the labels
        if split_seed != PER_RUN and (
            isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0
        ):
            raise ValueError(
                f"split_seed must be a non-negative integer or {PER_RUN!r}, got {split_seed!r}"
            )
        if isinstance(generation_seed, bool) or not 0 <= generation_seed < 2**32:
            raise ValueError(
                f"--data.generation_seed {generation_seed}: an integer from 0 to 2**32 - 1 "
                "(42: the published data)"
            )
        if cache_dir is not None and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
            raise ValueError(f"--data.cache_dir {cache_dir} is a file; give a folder")
        check_variant(self._variant_of(locals()))
        self.save_hyperparameters(logger=False)  # the model logs them, flat, with its own
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        #: The seed the current validation split was drawn with (``None`` before ``setup``).
        self.resolved_split_seed: int | None = None
        self._loaded: dict[str, np.ndarray] | None = None
        #: Set by a ``PopulationClassifier`` while it trains: one shuffle seed per member.
        self.population_seeds: list[int] | None = None
        #: Set by tune and compare where nothing can observe it (``runs.build.chunk_where_invisible``):
        #: whole epochs per Lightning batch, without changing the recorded ``steps_per_chunk``.
        self.chunk_invisibly = False

    @staticmethod
    def _variant_of(values: dict[str, Any]) -> dict[str, Any]:
        return {name: values[name] for name in VARIANT_DEFAULTS}

    @property
    def variant(self) -> dict[str, Any]:
        """The generator arguments of this data (``VARIANT_DEFAULTS``' names)."""
        return self._variant_of(self.hparams)

    @property
    def input_size(self) -> int:
        """The length of a signal: what a net takes."""
        return self.hparams.final_seq_length

    num_classes = NUM_CLASSES

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
            self._loaded = load_mnist1d(
                hp.num_samples, hp.generation_seed, hp.cache_dir, **self.variant
            )
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
