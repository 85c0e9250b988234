"""The command line: LightningCLI's ``fit``/``validate``/``test`` with lightning_opt's defaults.

``--optimizer NAME`` is a top-level shortcut for ``model.optimizer`` (LightningCLI's own
optimizer auto-configuration is off, so it cannot swallow the flag). Errors a user can fix are
printed as one line with a non-zero exit; ``LIGHTNING_OPT_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.seed import max_seed_value as MAX_SEED
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_opt.data import MNIST1DDataModule
from lightning_opt.model import MNIST1DClassifier, NonFiniteLossError
from lightning_opt.optim.registry import get_optimizer, list_optimizers

EXIT_USAGE = 2  # bad input: nothing was trained
EXIT_FAILED = 1  # the run started and failed (e.g. non-finite loss); logs are kept

TRAINER_DEFAULTS = {
    "max_epochs": 50,  # the GNW-Adam seed note's final runs
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        # name null = the optimizer's name: lightning_logs/<optimizer>/version_N
        "init_args": {"save_dir": "lightning_logs", "name": None, "default_hp_metric": False},
    },
}


def check_trainer_settings(trainer: Any) -> None:
    """Refuse Trainer settings the model cannot honour, before anything is built.

    The model steps its optimizer itself (one step per minibatch, manual optimization), which
    Lightning does not combine with its own gradient clipping or accumulation.
    """
    if trainer.get("gradient_clip_val") not in (None, 0, 0.0):
        raise ValueError(
            "Trainer(gradient_clip_val=...) is not supported: the model steps its optimizer "
            "itself (one step per minibatch); use the callback "
            "lightning_opt.callbacks.FixedNormClipping with mode: global for the same rule"
        )
    if trainer.get("accumulate_grad_batches", 1) != 1:
        raise ValueError(
            "Trainer(accumulate_grad_batches=...) is not supported: the model takes one optimizer "
            "step per minibatch; raise data.batch_size instead"
        )


class LightningOptCLI(LightningCLI):
    """LightningCLI for ``MNIST1DClassifier`` on ``MNIST1DDataModule``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        self.add_optimizer_argument(parser)
        parser.add_argument(
            "--seeds",
            type=list[int] | None,
            default=None,
            help="train (or validate/test a checkpoint of) these seeds of the configuration at "
            "once as a population (e.g. [0,1,2,3,4]); member k equals `fit --seed_everything "
            "SEED_k`, and logs to its own run <log_dir>/seed_<SEED_k>",
        )

    @staticmethod
    def add_optimizer_argument(parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--optimizer",
            type=str,
            default="adam",
            help="Optimizer by name: "
            + "; ".join(f"{n} ({get_optimizer(n).description})" for n in list_optimizers()),
        )
        parser.link_arguments("optimizer", "model.optimizer")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        try:
            check_trainer_settings(config.trainer)
        except ValueError as err:
            raise _UsageError(str(err)) from None
        seeds = config.get("seeds")
        if seeds is not None:
            if self.subcommand == "predict":
                raise _UsageError("--seeds applies to fit, validate and test, not predict")
            if (
                not seeds
                or len(set(seeds)) != len(seeds)
                or not 0 <= min(seeds) <= max(seeds) <= MAX_SEED
            ):
                raise _UsageError(
                    f"--seeds must be a non-empty list of distinct integers from 0 to {MAX_SEED}, "
                    f"got {seeds}"
                )
        logger = config.trainer.logger
        if (
            logger
            and not isinstance(logger, bool)
            and getattr(logger, "class_path", "").endswith("TensorBoardLogger")
            and logger.init_args.get("name") is None
        ):
            logger.init_args.name = config.optimizer

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
            config = self.config[self.subcommand] if self.subcommand else self.config
            if config.get("seeds") is not None:
                self.model = self._population(config)
        except (ValueError, TypeError) as err:
            raise _UsageError(str(err)) from err

    def _population(self, config: Any) -> Any:
        """The model for ``fit --seeds``: one member per seed, each logging to its own run."""
        from lightning.pytorch.loggers import TensorBoardLogger

        from lightning_opt.population import PopulationClassifier

        model = PopulationClassifier(seeds=list(config.seeds), **config.model.as_dict())
        if self.trainer.logger is not None:
            log_dir = self.trainer.log_dir  # lightning_logs/<optimizer>/version_N
            model.member_loggers = [
                TensorBoardLogger(log_dir, name=f"seed_{seed}", version="", default_hp_metric=False)
                for seed in config.seeds
            ]
        return model

    def after_fit(self) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        trainer = self.trainer
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                print(
                    f"TensorBoard logs: {logger.log_dir}  (tensorboard --logdir {logger.save_dir})"
                )
        checkpoint = trainer.checkpoint_callback
        path = checkpoint and (checkpoint.best_model_path or checkpoint.last_model_path)
        if path:
            print(f"checkpoint: {path}")
        dropped = getattr(self.model, "dropped", None)
        if dropped is None:
            return
        for member, seed in enumerate(self.model.all_seeds):
            history = self.model.history[member]["val/loss"]
            status = dropped.get(member, f"val/loss {history[-1]:.4f}" if history else "")
            print(f"seed {seed}: {status}")
        failed = [self.model.all_seeds[m] for m, why in dropped.items() if "non-finite" in why]
        if failed:
            raise NonFiniteLossError(
                f"the training loss of seed(s) {failed} became non-finite; the other members "
                "finished"
            )

    def after_validate(self) -> None:
        self._print_members("val")

    def after_test(self) -> None:
        self._print_members("test")

    def _print_members(self, stage: str) -> None:
        """Each population member's result (Lightning's table shows the members' mean)."""
        model = self.model
        if not hasattr(model, "dropped"):
            return
        for member in model.member_ids:
            if stage == "test":
                values = model.test_results[member]
            else:
                values = {
                    f"val/{k}": model.history[member][f"val/{k}"][-1] for k in ("loss", "acc")
                }
            shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items())
            print(f"seed {model.all_seeds[member]}: {shown}")


class _UsageError(Exception):
    pass


def _fail(code: int, message: str) -> None:
    print(f"lightning_opt: error: {message}", file=sys.stderr)
    sys.exit(code)


def cli_main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m lightning_opt`` and ``lightning-opt``; ``args`` for tests."""
    debug = os.environ.get("LIGHTNING_OPT_DEBUG") == "1"
    # The seed is recorded in each run's config.yaml; keep stderr for what needs attention.
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    # Metrics are logged once per epoch, so Lightning's step-logging interval does not apply.
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval")
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] == ["tune"]:
            from lightning_opt.tune import run_tune

            run_tune(argv[1:])
            return
        if argv[:1] == ["compare"]:
            from lightning_opt.compare import run_compare

            run_compare(argv[1:])
            return
        LightningOptCLI(
            MNIST1DClassifier,
            MNIST1DDataModule,
            args=args,
            seed_everything_default=0,
            trainer_defaults=TRAINER_DEFAULTS,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},
        )
    except ArgumentError as err:  # jsonargparse: an unknown key, a wrong type, ...
        if debug:
            raise
        _fail(EXIT_USAGE, f"{' '.join(str(err).split())} (see --help)")
    except _UsageError as err:
        if debug:
            raise
        _fail(EXIT_USAGE, str(err))
    except NonFiniteLossError as err:
        if debug:
            raise
        _fail(EXIT_FAILED, f"{err}. Logs and checkpoints so far are kept.")
    except ValueError as err:  # raised by a hook's own checks (e.g. conflicting clipping)
        if debug:
            raise
        _fail(EXIT_USAGE, str(err))
    except MisconfigurationException as err:  # Lightning's own configuration checks
        if debug:
            raise
        _fail(EXIT_USAGE, " ".join(str(err).split()))
