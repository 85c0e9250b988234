"""mnist1d for Lightning: generation and variants, splits, batches and the DataModule."""

from lightning_opt.data.batches import (
    EpochPermutation,
    MiniBatches,
    PopulationBatches,
    PopulationPermutation,
    TensorBatches,
)
from lightning_opt.data.generation import (
    CACHE_ENV,
    NUM_CLASSES,
    PER_RUN,
    VARIANT_DEFAULTS,
    check_arrays,
    check_variant,
    default_cache_dir,
    generation_args,
    load_mnist1d,
)
from lightning_opt.data.module import MNIST1DDataModule
from lightning_opt.data.splits import check_split_sizes, stratified_split

__all__ = [
    "CACHE_ENV",
    "NUM_CLASSES",
    "PER_RUN",
    "VARIANT_DEFAULTS",
    "EpochPermutation",
    "MNIST1DDataModule",
    "MiniBatches",
    "PopulationBatches",
    "PopulationPermutation",
    "TensorBatches",
    "check_arrays",
    "check_split_sizes",
    "check_variant",
    "default_cache_dir",
    "generation_args",
    "load_mnist1d",
    "stratified_split",
]
