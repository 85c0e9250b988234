"""mnist1d generated locally with its own generator (never downloaded, never unpickled),
variants of it (the generator's arguments), and the ``.npz`` cache keyed by all of them."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from lightning_opt.core.atomic import replacing

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


#: mnist1d's generator arguments that make a dataset variant, with the values of the published
#: data (``mnist1d.data.get_dataset_args``); ``shuffle_positions`` is its ``shuffle_seq``.
VARIANT_DEFAULTS: dict[str, Any] = {
    "template_len": 12,
    "padding": [36, 60],
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 2e-2,
    "shear_scale": 0.75,
    "shuffle_positions": False,
    "final_seq_length": 40,
}


def check_variant(variant: dict[str, Any]) -> None:
    """Raise ``ValueError`` (one line, naming the ``--data`` flag) unless mnist1d's generator
    can make the variant: positive lengths, a padding range ``[low, high]`` of non-negative
    integers, a translation within the padded template, non-negative noise and shear scales, and
    a scale coefficient in [0, 2) (so every example keeps its sign)."""
    unknown = sorted(set(variant) - set(VARIANT_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown mnist1d generator arguments: {', '.join(unknown)}")
    v = {**VARIANT_DEFAULTS, **variant}

    def integer(name: str, low: int) -> int:
        value = v[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"--data.{name} must be an integer >= {low}, got {value!r}")
        return value

    integer("template_len", 1)
    integer("final_seq_length", 2)
    padding = v["padding"]
    if (
        not isinstance(padding, (list, tuple))
        or len(padding) != 2
        or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in padding)
        or padding[0] > padding[1]
    ):
        raise ValueError(
            f"--data.padding must be [low, high], integers with 0 <= low <= high, got {padding!r}"
        )
    longest = v["template_len"] + padding[1]
    translation = integer("max_translation", 1)
    if translation > longest:
        raise ValueError(
            f"--data.max_translation must be at most template_len + padding[1] = {longest} "
            f"(the padded signal's length), got {translation}"
        )
    for name in ("corr_noise_scale", "iid_noise_scale", "shear_scale"):
        value = v[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0 <= value < math.inf
        ):
            raise ValueError(f"--data.{name} must be a finite number >= 0, got {value!r}")
    scale = v["scale_coeff"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale < 2:
        raise ValueError(f"--data.scale_coeff must be in [0, 2), got {scale!r}")
    if not isinstance(v["shuffle_positions"], bool):
        raise ValueError(
            f"--data.shuffle_positions must be true or false, got {v['shuffle_positions']!r}"
        )


def generation_args(num_samples: int = 5000, generation_seed: int = 42, **variant: Any) -> dict:
    """mnist1d's generation arguments (without its download URL): its defaults, our
    ``num_samples`` and ``generation_seed``, and a variant's overrides (``VARIANT_DEFAULTS``;
    ``shuffle_positions`` sets ``shuffle_seq``: one fixed permutation of the positions, drawn
    from the generation seed). The defaults give the published data and its cache key."""
    from mnist1d.data import get_dataset_args  # imports matplotlib: only when generating

    check_variant(variant)
    args = get_dataset_args(as_dict=True)
    args.pop("url", None)
    args.update(num_samples=num_samples, seed=generation_seed)
    for name, value in variant.items():
        key = "shuffle_seq" if name == "shuffle_positions" else name
        args[key] = list(value) if isinstance(value, tuple) else value
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
    num_samples: int = 5000,
    generation_seed: int = 42,
    cache_dir: str | Path | None = None,
    **variant: Any,
) -> dict[str, np.ndarray]:
    """mnist1d arrays ``x, y, x_test, y_test``, from the cache or generated (and then cached).

    ``variant``: generator arguments (``VARIANT_DEFAULTS``), part of the cache key.

    A cache file that is truncated, corrupt, or holds arrays of the wrong shape, dtype, label
    range or with NaN/inf values (``check_arrays``) is reported in one warning line and
    regenerated.
    """
    args = generation_args(num_samples, generation_seed, **variant)
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
    with replacing(path, suffix=".npz") as tmp:  # a concurrent reader never sees half a file
        np.savez(tmp, **arrays)
    return arrays
