"""The command line: LightningCLI's ``fit``/``validate``/``test`` plus ``tune`` and ``compare``.

``--optimizer`` takes any ``torch.optim.Optimizer`` subclass by class path, or a short name
(``config.parsing``). Bad input a user can fix is printed as one line with exit code 2; an error
raised while training keeps its traceback (exit code 1). ``LIGHTNING_OPT_DEBUG=1`` shows the
traceback of a usage error too.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import warnings
from typing import Any

from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.seed import max_seed_value as MAX_SEED
from lightning.pytorch.cli import LightningArgumentParser

from lightning_opt.clipping.callbacks import check_clipping_callbacks
from lightning_opt.config.parsing import (
    HelpfulParser,
    OptimizerCLI,
    RunFailure,
    UsageError,
    build_cli,
    check_trainer_settings,
    did_you_mean,
    net_class_path,
    place_loggers,
    summarize_argument_error,
    unreadable_checkpoint_reason,
)
from lightning_opt.core import signals
from lightning_opt.core.allocator import keep_large_blocks
from lightning_opt.core.names import check_limit
from lightning_opt.core.protocols import MemberTraining
from lightning_opt.models import net_short_name
from lightning_opt.optim.registry import import_class
from lightning_opt.training.loop import NonFiniteLossError

EXIT_USAGE = 2  # bad input: nothing was trained
EXIT_FAILED = 1  # the run started and failed (e.g. non-finite loss); logs are kept


_MISSING = object()


def _saved_model_value(hparams: dict[str, Any], key: str) -> Any:
    """The checkpoint's value of ``--model.KEY`` (``net.ARG``: the net's argument)."""
    name, _, arg = key.partition(".")
    if name not in hparams:
        return _MISSING
    if not arg:
        return hparams[name]
    nested = hparams[name] if isinstance(hparams[name], dict) else {}
    return (nested.get("init_args") or {}).get(arg, _MISSING)


def _check_weights_fit(model: Any, checkpoint: dict[str, Any]) -> None:
    """Refuse weights that the model's parameters cannot take (``ValueError``), naming the
    first tensor whose shape differs, a missing and an unexpected one."""
    saved = checkpoint.get("state_dict")
    if not isinstance(saved, dict):
        raise ValueError("it holds no state_dict (not a Lightning checkpoint)")
    own = model.state_dict()
    missing = [key for key in own if key not in saved]
    unexpected = [key for key in saved if key not in own]
    if missing or unexpected:
        raise ValueError(
            f"its weights do not fit the model: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]} (trained with another net?)"
        )
    for key, tensor in own.items():
        theirs = saved[key]
        if hasattr(theirs, "shape") and tuple(theirs.shape) != tuple(tensor.shape):
            raise ValueError(
                f"its weights do not fit the model: {key} is {list(theirs.shape)} in the "
                f"checkpoint and {list(tensor.shape)} here (trained with other net arguments?)"
            )


class LightningOptCLI(OptimizerCLI):
    """``fit``, ``validate``, ``test`` and ``predict``, with ``--seeds`` for populations."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        self.add_optimizer_argument(parser)
        parser.add_argument(
            "--seeds",
            type=int | list[int] | None,
            default=None,
            help="train (or validate/test/predict a checkpoint of) these seeds of the configuration at "
            "once as a population: a list (e.g. [0,1,2,3,4]), or a count N for the N seeds from "
            "--seed_everything on (as compare's and benchmark's --seeds N); member k equals `fit "
            "--seed_everything SEED_k`, and logs to its own run <log_dir>/seed_<SEED_k>",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        try:
            check_trainer_settings(config.trainer, training=self.subcommand == "fit")
        except ValueError as err:
            raise UsageError(str(err)) from None
        seeds = config.get("seeds")
        if isinstance(seeds, int) and not isinstance(seeds, bool):  # a count, as compare's
            first = config.get("seed_everything")
            if isinstance(first, bool) or not isinstance(first, int) or seeds < 1:
                raise UsageError(
                    f"--seeds {seeds}: a count of seeds is a positive integer, counted from an "
                    f"integer --seed_everything (got {first}); or give the list of seeds"
                )
            try:
                check_limit("seeds", seeds, "--seeds")
            except ValueError as err:
                raise UsageError(str(err)) from None
            seeds = config.seeds = [first + k for k in range(seeds)]
        if seeds is not None and (
            not seeds
            or len(set(seeds)) != len(seeds)
            or not 0 <= min(seeds) <= max(seeds) <= MAX_SEED
        ):
            raise UsageError(
                f"--seeds must be a non-empty list of distinct integers from 0 to {MAX_SEED}, "
                f"got {seeds}"
            )
        place_loggers(config)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
            config = self.config[self.subcommand] if self.subcommand else self.config
            check_clipping_callbacks(self.trainer.callbacks, self.trainer.gradient_clip_val)
            if config.get("seeds") is not None:
                self.model = self._population(config)
                self.model.check_clipping(self.trainer.callbacks)
        except (ValueError, TypeError) as err:
            raise UsageError(str(err)) from err

    def _population(self, config: Any) -> Any:
        """The model for ``fit --seeds``: one member per seed, each logging to its own run."""
        from lightning_opt.runs.build import build_population, check_run_loggers, run_loggers

        model = build_population(config, config.seeds)
        if self.trainer.logger is not None:
            check_run_loggers(config)
            log_dir = self.trainer.log_dir  # lightning_logs/<optimizer>/version_N
            model.member_loggers = [
                run_loggers(config, log_dir, f"seed_{seed}") for seed in config.seeds
            ]
        return model

    def _check_ckpt(self) -> None:
        """A checkpoint the model cannot load is bad input: one line, before anything runs."""
        import torch

        config = self.config[self.subcommand]
        path = config.get("ckpt_path")
        if not path and self.subcommand != "fit":
            raise UsageError(
                f"{self.subcommand} needs --ckpt_path, the weights to evaluate (fit writes "
                "lightning_logs/<optimizer>/version_N/checkpoints/*.ckpt); without it the model "
                "would be freshly initialised"
            )
        named = path in ("last", "best", "hpc", "registry")
        if named and self.subcommand != "fit":  # Lightning would evaluate untrained weights
            raise UsageError(
                f"--ckpt_path {path}: {self.subcommand} trains nothing in this process, so there "
                f"is no {path} checkpoint to evaluate; give the checkpoint file (fit writes "
                "lightning_logs/<optimizer>/version_N/checkpoints/*.ckpt)"
            )
        if not path or named:
            return
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UsageError(f"--ckpt_path {path}: no such file") from None
        except Exception as err:  # a text file, a truncated file, ...
            reason = unreadable_checkpoint_reason(path, err)
            raise UsageError(f"--ckpt_path {path} is not a readable checkpoint: {reason}") from None
        try:
            self.model.check_checkpoint(checkpoint)
        except ValueError as err:
            raise UsageError(f"--ckpt_path {path}: {err}") from None
        self._check_model_flags(path, checkpoint.get("hyper_parameters") or {})
        try:
            _check_weights_fit(self.model, checkpoint)
        except ValueError as err:
            raise UsageError(f"--ckpt_path {path}: {err}") from None
        saved = (checkpoint.get("hyper_parameters") or {}).get("optimizer")
        if self.subcommand == "fit" and isinstance(saved, dict) and "class_path" in saved:
            try:
                saved_class = import_class(saved["class_path"])
            except ValueError as err:
                raise UsageError(f"--ckpt_path {path}: {err}") from None
            if saved_class is not self.model.optimizer_class:
                raise UsageError(
                    f"--ckpt_path {path} was trained with {saved['class_path']}; its state cannot "
                    f"resume {self.model.optimizer_class.__name__}: leave --optimizer out to "
                    "resume with the checkpoint's"
                )

    def _check_model_flags(self, path: str, hparams: dict[str, Any]) -> None:
        """A ``--model.X`` the checkpoint also sets would be replaced by the checkpoint's value
        (LightningCLI loads its hyperparameters over the command line): refuse a different one."""
        import re

        import yaml

        argv = getattr(self, "argv", [])
        for i, token in enumerate(argv):
            match = re.fullmatch(r"--model\.(\w+(?:\.\w+)?)(?:=(.*))?", token)
            if not match:
                continue
            key, text = match.group(1), match.group(2)
            saved = _saved_model_value(hparams, key)
            if saved is _MISSING:
                continue
            if text is None:
                text = argv[i + 1] if i + 1 < len(argv) else ""
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                value = text
            if key == "net" and isinstance(saved, dict):  # the class, by name or path
                value = net_class_path(value)
                saved = net_class_path(saved)
                text = net_short_name(value) if isinstance(value, str) else text
            if value != saved:
                raise UsageError(
                    f"--model.{key} {text}: the weights of --ckpt_path {path} were trained with "
                    f"{key}={saved!r}; leave the flag out (the checkpoint sets it)"
                )

    def before_fit(self) -> None:
        self._check_ckpt()
        self._check_data()

    def _check_data(self) -> None:
        """Generate (or read) the data now: a split that comes out empty, or a population on
        per-run validation splits, is bad input (one line), not a failure inside training."""
        data = self.datamodule
        try:
            data.prepare_data()
            if isinstance(self.model, MemberTraining) and data.split_seed_is_per_run:
                raise ValueError(
                    "--seeds trains its members on one validation split: data.split_seed "
                    "per_run needs one fit per seed"
                )
        except ValueError as err:
            raise UsageError(str(err)) from None

    def before_validate(self) -> None:
        self._check_ckpt()

    def before_test(self) -> None:
        self._check_ckpt()

    def before_predict(self) -> None:
        from pathlib import Path

        from lightning_opt.training.predictions import PredictionCSV

        self._check_ckpt()
        self._predictions = str(Path(self.trainer.log_dir or ".") / "predictions.csv")
        self.trainer.callbacks.append(PredictionCSV(self._predictions))

    def after_predict(self) -> None:
        print(f"predictions: {self._predictions}")

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
        if not isinstance(self.model, MemberTraining):
            return
        dropped = self.model.dropped
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
        if not isinstance(model, MemberTraining):
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


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a disk, a quota or a file-size limit
# Errors of the machine or of a path the user gave (a folder under /proc, a file where a folder
# is needed, a forbidden place), not of the run.
_MACHINE_ERRORS = (
    *_FULL, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
    errno.ENAMETOOLONG, errno.ELOOP,
)  # fmt: skip


def _fail(code: int, message: str) -> None:
    print(f"lightning_opt: error: {message}", file=sys.stderr)
    sys.exit(code)


SUBCOMMANDS = {
    "fit": "train a model (--seeds [..]: several seeds at once as a population)",
    "validate": "evaluate a checkpoint (--ckpt_path) on the validation split",
    "test": "evaluate a checkpoint (--ckpt_path) on the held-out test split",
    "predict": "write per-example test-split predictions of a checkpoint as CSV",
    "tune": "Optuna search of a fit configuration (pruning, workers, populations, resume)",
    "compare": "an experiment: tune each arm, retrain over seeds, test once, report",
    "benchmark": "an optimizer against tuned baselines over a suite of workloads (AlgoPerf score)",
}


def _print_help() -> None:
    print("usage: python -m lightning_opt SUBCOMMAND [options]   (SUBCOMMAND --help: its options)")
    print("\nsubcommands:")
    for name, what in SUBCOMMANDS.items():
        print(f"  {name:<9} {what}")


def cli_main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m lightning_opt`` and ``lightning-opt``; ``args`` for tests."""
    debug = os.environ.get("LIGHTNING_OPT_DEBUG") == "1"
    # The seed is recorded in each run's config.yaml; keep stderr for what needs attention.
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    # Metrics are logged once per epoch, so Lightning's step-logging interval does not apply.
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval")
    argv = sys.argv[1:] if args is None else list(args)
    keep_large_blocks()  # a population's big activations, recycled instead of re-faulted
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # --optimizer my_opts.Lion, as under `python -m`
    if argv[:1] in ([], ["-h"], ["--help"]):
        _print_help()
        if not argv:
            sys.exit(EXIT_USAGE)
        return
    HelpfulParser.command = argv[0]
    with signals.handled():
        _run_subcommand(argv, debug)


def _lightning_subcommand(argv: list[str]) -> None:
    """fit, validate, test or predict. Ctrl-C or SIGTERM: Lightning stops the run at once and
    exits (1 or 0); say so and exit with 130 or 143, as tune and compare do."""
    try:
        build_cli(LightningOptCLI, argv, save_config_kwargs={"overwrite": True})
    except SystemExit as exit_:
        if not signals.stopped_by_signal(exit_):
            raise
        what = "SIGTERM" if signals.terminated() else "Ctrl-C"
        print(
            f"lightning_opt: interrupted ({what}): the run stopped; its logs and checkpoints so "
            "far are kept (a fit resumes with --ckpt_path CHECKPOINT)",
            file=sys.stderr,
        )
        sys.exit(signals.interrupt_exit_code())


def _study_command(argv: list[str]) -> None:
    """tune, compare or benchmark."""
    if argv[0] == "tune":
        from lightning_opt.tuning.tune import run_tune

        run_tune(argv[1:])
    elif argv[0] == "compare":
        from lightning_opt.experiments.compare import run_compare

        run_compare(argv[1:])
    else:
        from lightning_opt.benchmark.command import run_benchmark

        run_benchmark(argv[1:])


def _run_subcommand(argv: list[str], debug: bool) -> None:
    try:
        if not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
            raise UsageError(
                f"unknown subcommand {argv[0]!r}; choose one of: {', '.join(SUBCOMMANDS)}"
            )
        if argv[0] in ("tune", "compare", "benchmark"):
            # Imported here: fit, validate, test and predict do not pay for Optuna.
            from lightning_opt.tuning.storage import one_per_command

            with one_per_command():
                _study_command(argv)
            return
        _lightning_subcommand(argv)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM between runs (a study or an experiment writing its outputs, a
        # benchmark between workloads): every finished trial and run is recorded already.
        if debug:
            raise
        print(
            "interrupted: finished trials and runs are kept; run the same command again to resume",
            file=sys.stderr,
        )
        sys.exit(signals.interrupt_exit_code())
    except ArgumentError as err:  # jsonargparse: an unknown key, a wrong type, ...
        if debug:
            raise
        summary = summarize_argument_error(str(err))
        _fail(EXIT_USAGE, f"{summary}{did_you_mean(summary)} (see --help)")
    except UsageError as err:
        if debug:
            raise
        _fail(EXIT_USAGE, str(err))
    except RunFailure as err:
        if debug:
            raise
        _fail(EXIT_FAILED, str(err))
    except NonFiniteLossError as err:
        if debug:
            raise
        _fail(EXIT_FAILED, f"{err}. Logs and checkpoints so far are kept.")
    except MisconfigurationException as err:  # Lightning's own configuration checks
        if debug:
            raise
        _fail(EXIT_USAGE, " ".join(str(err).split()))
    except OSError as err:
        # The machine, not the run: a full disk, a read-only or forbidden folder. What was
        # written before stays (outputs are written under temporary names and renamed).
        if debug or err.errno not in _MACHINE_ERRORS:
            raise
        where = f" ({err.filename})" if err.filename else ""
        advice = "free space or choose another directory" if err.errno in _FULL else (
            "choose another directory"
        )  # fmt: skip
        _fail(EXIT_FAILED, f"{err.strerror}{where}; {advice}")
