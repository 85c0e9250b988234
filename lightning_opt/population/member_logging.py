"""Each member's metrics and hyperparameters to its own loggers, with the names and steps a
single ``fit`` logs, and each member's epoch history of the internals."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.loggers import Logger
from torch import Tensor
from typing_extensions import override

from lightning_opt.training.hparams import log_hyperparams, run_hparams


def as_list(loggers: Logger | list[Logger]) -> list[Logger]:
    return loggers if isinstance(loggers, list) else [loggers]


class MemberLogging:
    """Per-member logging; a mixin of ``PopulationClassifier``, which sets ``member_loggers``
    (one logger or list of loggers per live member)."""

    def _record_internals(self, metrics: dict[str, Tensor | float]) -> None:
        """Each member's epoch means of the optim/* values, in ``history`` (one sync)."""
        names = [n for n in metrics if n.startswith("optim/")]
        if not names:
            return
        columns = [
            metrics[n].tolist() if isinstance(metrics[n], Tensor) and metrics[n].dim() else None
            for n in names
        ]
        absent = self._absent_metrics()
        for position, member in enumerate(self.member_ids):
            for name, column in zip(names, columns, strict=True):
                if name in absent and absent[name][position]:
                    continue
                value = column[position] if column is not None else float(metrics[name])
                self.history[member].setdefault(name, []).append(value)

    def log_member_metrics(
        self, metrics: dict[str, Tensor], members: list[int] | None = None
    ) -> None:
        """Per-member values to log with this epoch's (used by the clipping callbacks): ``(K,)``,
        or with ``members`` (original indices) one value per live one of them, in their order;
        the other members log no such value."""
        if members is None:
            self._member_metrics.update(metrics)
            return
        positions = [p for start, stop in self.member_runs(members) for p in range(start, stop)]
        index = torch.tensor(positions)
        for name, values in metrics.items():
            full = self._member_metrics.get(name)
            if full is None:
                full = values.new_full((self.num_members,), float("nan"))
                self._metric_lacking[name] = [True] * self.num_members
            self._member_metrics[name] = full.index_copy(0, index.to(full.device), values)
            for position in positions:
                self._metric_lacking[name][position] = False

    def _log_members(self, metrics: dict[str, Tensor | float], step: int) -> None:
        """Send ``metrics`` (per-member tensors ``(K,)`` or shared numbers) to member loggers."""
        if not self.member_loggers:
            return
        names = list(metrics)
        per_member = [v for v in metrics.values() if isinstance(v, Tensor)]
        rows = torch.stack(per_member, 1).tolist() if per_member else [[]] * self.num_members
        absent = self._absent_metrics()
        for member, row in enumerate(rows):
            values = iter(row)
            record = {n: next(values) if isinstance(metrics[n], Tensor) else metrics[n]
                      for n in names}  # fmt: skip
            for name, lacking in absent.items():
                if name in record and lacking[member]:
                    del record[name]
            for logger in as_list(self.member_loggers[member]):
                logger.log_metrics(record, step=step)

    def _absent_metrics(self) -> dict[str, list[bool]]:
        """``{name: [whether live member k's single fit logs no such value]}``: in a population
        whose members train with different optimizers, the effective step size of those whose
        optimizer keeps none, and with different clipping rules, the clip/* values of those
        that clip by none (their entries are NaN)."""
        absent = dict(self._metric_lacking)  # the clip/* values of members another rule clips
        optimizer = self._memberwise() if self._trainer else None
        lacking = getattr(optimizer, "lacking_effective_lr", None)
        if lacking is not None and len(lacking) == self.num_members:
            absent["optim/effective_lr"] = lacking.tolist()
        return absent

    def _member_hparams_for_logging(self, member: int) -> dict[str, Any]:
        callbacks = self.trainer.callbacks
        if self.clipping_rules is not None:  # its own rule's settings only
            rule = self.member_rule[member]
            callbacks = [c for c in callbacks if c not in self.clipping_rules or c is rule]
        params = run_hparams(
            self, self.member_kwargs[member], seed=self.all_seeds[member],
            hparams=self.member_model_hparams(member), callbacks=callbacks,
        )  # fmt: skip
        for name, values in self.member_clipping.items():
            if values[member] is not None:
                params[f"clip/{name}"] = values[member]
        return params

    @override
    def on_fit_start(self) -> None:
        if not self.member_loggers:
            return
        for loggers, member in zip(self.member_loggers, self.member_ids, strict=True):
            for logger in as_list(loggers):
                logger.log_hyperparams(self._member_hparams_for_logging(member))

    @override
    def on_train_end(self) -> None:
        self._end_training_modes()
        if not self.member_loggers:
            return
        for loggers, member in zip(self.member_loggers, self.member_ids, strict=True):
            self._log_member_results(member, loggers)

    def _log_member_results(self, member: int, loggers: Any) -> None:
        """What a single fit's ``on_train_end`` logs: its hyperparameters with its results."""
        history = self.history[member]
        results = {
            "hp/val_loss": history["val/loss"][-1] if history["val/loss"] else float("nan"),
            "hp/val_acc": history["val/acc"][-1] if history["val/acc"] else float("nan"),
            "hp/best_val_loss": min(history["val/loss"], default=float("inf")),
        }
        params = self._member_hparams_for_logging(member)
        for logger in as_list(loggers):
            log_hyperparams(logger, params, results, self._lightning_step() - 1)
