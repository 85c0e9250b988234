"""The stratified validation split, and the checks that no split comes out empty."""

from __future__ import annotations

import math

import numpy as np

from lightning_opt.data.generation import NUM_CLASSES


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


def check_split_sizes_from_numbers(num_samples: int, val_fraction: float) -> None:
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
