"""Learning-rate schedulers by class path (``--lr_scheduler``), and one per population member.

Any ``torch.optim.lr_scheduler.LRScheduler`` subclass or ``ReduceLROnPlateau`` works, with its
constructor arguments (less ``optimizer``) in ``init_args``, checked by its own constructor. The
model steps it itself (manual optimization): after every optimizer step, or at the end of every
training epoch (after validation, so ``ReduceLROnPlateau`` sees that epoch's ``val/loss``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_opt.core.reflection import class_spec
from lightning_opt.optim.registry import constructor_arguments, import_class

SCHEDULER_BASES = (LRScheduler, ReduceLROnPlateau)


def resolve_scheduler(value: Any) -> tuple[type, dict[str, Any]] | None:
    """``(class, {class_path, init_args})`` of a scheduler given as a class path or a mapping,
    every constructor default filled in; ``None`` for no scheduler."""
    if value is None:
        return None
    value = class_spec(value, "a scheduler is a class path or")
    cls = import_class(value["class_path"])
    if not issubclass(cls, SCHEDULER_BASES):
        raise ValueError(f"{value['class_path']} is not a torch LRScheduler or ReduceLROnPlateau")
    args = {n: p.default for n, p in scheduler_arguments(cls).items() if p.default is not p.empty}
    args.update(value["init_args"])
    return cls, {"class_path": value["class_path"], "init_args": args}


def scheduler_arguments(cls: type) -> dict[str, Any]:
    """The constructor arguments of a scheduler class but ``optimizer``."""
    return {n: p for n, p in constructor_arguments(cls).items() if n != "optimizer"}


def check_scheduler(cls: type, init_args: dict[str, Any]) -> None:
    """Build ``cls`` once on a throwaway optimizer and step it twice, so its own code checks
    ``init_args`` (constructors do not check everything: StepLR divides by ``step_size`` only
    when it steps)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    try:
        scheduler = cls(optimizer, **init_args)
        for _ in range(2):
            optimizer.step()
            step_scheduler(scheduler, 1.0)
    except (TypeError, ValueError, KeyError, ArithmeticError, IndexError) as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in init_args.items())
        raise ValueError(f"{cls.__name__}({shown}): {type(err).__name__}: {err}") from None


def step_scheduler(scheduler: Any, metric: Tensor | float | None) -> None:
    """One step; ``ReduceLROnPlateau`` (and a ``MemberwiseScheduler`` of them) with ``metric``."""
    if isinstance(scheduler, MemberwiseScheduler):
        scheduler.step(metric)
    elif isinstance(scheduler, ReduceLROnPlateau):
        scheduler.step(float(metric))
    else:
        scheduler.step()


def needs_metric(scheduler: Any) -> bool:
    if isinstance(scheduler, MemberwiseScheduler):
        return any(isinstance(s, ReduceLROnPlateau) for s in scheduler.members)
    return isinstance(scheduler, ReduceLROnPlateau)


class MemberwiseScheduler:
    """One scheduler per population member (over that member's own optimizer), stepped together.

    Args:
        members: member k's scheduler, over member k's optimizer (``None``: member k trains
            without one, in a population whose members train with different settings).
        optimizer: the ``MemberwiseOptimizer`` of those optimizers.

    ``step(metrics)`` gives member k ``metrics[k]`` (a ``ReduceLROnPlateau`` per member);
    ``state_dict`` holds every member's, so a checkpoint resumes each member's schedule.
    """

    def __init__(self, members: Sequence[Any], optimizer: torch.optim.Optimizer) -> None:
        self.members = list(members)
        self.optimizer = optimizer  # the MemberwiseOptimizer the members' optimizers make up

    def step(self, metrics: Tensor | Sequence[float] | None = None) -> None:
        values = metrics.tolist() if isinstance(metrics, Tensor) else metrics
        for k, scheduler in enumerate(self.members):
            if scheduler is not None:
                step_scheduler(scheduler, None if values is None else values[k])

    def state_dict(self) -> dict[str, Any]:
        return {"members": [None if s is None else s.state_dict() for s in self.members]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["members"]
        if len(saved) != len(self.members):
            raise ValueError(
                f"the scheduler state holds {len(saved)} member(s); this population has "
                f"{len(self.members)}"
            )
        for scheduler, state in zip(self.members, saved, strict=True):
            if scheduler is not None:
                scheduler.load_state_dict(state)

    def select_members(self, index: Tensor) -> None:
        self.members[:] = [self.members[i] for i in index.tolist()]


class WarmupCosine(torch.optim.lr_scheduler.LambdaLR):
    """Linear warmup to the optimizer's lr, then cosine decay to ``final_fraction`` of it
    (AlgoPerf's NAdamW baseline schedule); stepped after every optimizer step
    (``--model.lr_interval step``).

    Args:
        total_steps: the run's optimizer steps (``benchmark`` sets it from each workload's
            budget).
        warmup_fraction: the share of the steps that warm up.
        final_fraction: the lr at the last step, as a fraction of the peak.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_fraction: float = 0.05,
        final_fraction: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if not 0.0 <= final_fraction <= 1.0:
            raise ValueError(f"final_fraction must be in [0, 1], got {final_fraction}")
        self.total_steps, self.warmup_fraction = total_steps, warmup_fraction
        self.final_fraction = final_fraction
        warmup = max(1, round(warmup_fraction * total_steps)) if warmup_fraction else 0

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            done = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * done))

        super().__init__(optimizer, factor, last_epoch)
