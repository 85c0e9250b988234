"""``compile``: the training loss compiled by ``torch.compile`` trains the same members as the
eager path, to float tolerance (on CPU; inductor needs a C++ compiler, which ``make`` has)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import MNIST1D, one_thread
from lightning.pytorch import Trainer

from lightning_opt.clipping.callbacks import WeightNormClipping
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.population import PopulationClassifier
from lightning_opt.training.classifier import MNIST1DClassifier
from lightning_opt.training.loop import compile_mode

pytestmark = pytest.mark.filterwarnings("ignore:You called `self.log")


def _fit(model, data: MNIST1DDataModule, callbacks=()) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1,
        limit_train_batches=3, callbacks=list(callbacks),
    ).fit(model, datamodule=data)  # fmt: skip
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}


@pytest.fixture
def data(data_cache: Path) -> MNIST1DDataModule:
    return MNIST1DDataModule(num_samples=1000, cache_dir=str(data_cache))


def test_a_compiled_population_trains_the_members_of_the_eager_one(data) -> None:
    torch._dynamo.reset()
    with one_thread():
        weights = {}
        for compile_ in (False, True):
            pop = PopulationClassifier([0, 1, 2], **MNIST1D, optimizer="gnw", compile=compile_,
                                       member_hparams={"lr": [1e-3, 3e-3, 1e-2]})  # fmt: skip
            weights[compile_] = _fit(pop, data, [WeightNormClipping(clip_factor=0.1)])
            if compile_:
                assert pop._loss_fn is not pop._minibatch_loss  # the compiled one trained
    for name, eager in weights[False].items():
        torch.testing.assert_close(weights[True][name], eager, rtol=1e-4, atol=1e-5)


def test_a_compiled_single_model_trains_as_the_eager_one(data) -> None:
    with one_thread():
        eager = _fit(MNIST1DClassifier(**MNIST1D, optimizer="adam"), data)
        compiled = _fit(MNIST1DClassifier(**MNIST1D, optimizer="adam", compile="default"), data)
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name], value, rtol=1e-4, atol=1e-5)


def test_compile_settings() -> None:
    assert compile_mode(False, "cpu") is None
    assert compile_mode(True, "cpu") == "default"
    assert compile_mode(True, "cuda") == "reduce-overhead"
    assert compile_mode("max-autotune", "cuda") == "max-autotune"
    with pytest.raises(ValueError, match="compile must be true, false or one of"):
        MNIST1DClassifier(**MNIST1D, compile="fast")
