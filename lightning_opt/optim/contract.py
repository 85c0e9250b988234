"""What an optimizer's ``step`` needs, found by trying it: the pre-flight step.

Optimizers differ in what one step asks of the training loop: a closure that re-evaluates the
loss (LBFGS, SAM: called several times a step), a backward that keeps the graph so the step can
differentiate the gradients again (AdaHessian, SophiaH: ``create_graph=True``), and train/eval
modes with other weights for evaluation (schedule-free). ``preflight`` takes one step of the
class on a copy of the net, on one random minibatch, before anything trains, and records what
the step did (``StepContract``); the training loop then gives exactly that. A step that fails
there is one line naming the class and the cause, not a traceback at step 1 of the first trial.

A class may say it itself: ``create_graph = True`` as a class attribute skips the trial of
a plain backward.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import random as pyrandom
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: The message of a backward through gradients that were computed without a graph.
_NO_GRAPH = ("does not require grad", "does not have a grad_fn")

PREFLIGHT_BATCH = 8


@dataclass(frozen=True)
class StepContract:
    """What one ``step`` of an optimizer class needs.

    Attributes:
        closure_calls: how many times the first step called its closure (1 for most; LBFGS and
            SAM more: a population cannot share those evaluations between its members).
        create_graph: the backward must build the graph of the gradients.
        modes: the optimizer has ``train()``/``eval()`` (schedule-free): train mode for
            training steps, eval mode for every evaluation and for saved weights.
        random: the step drew from a global random generator (Kron's numpy draws).
        evaluate_first: the step reads the gradients before it calls its closure (SAM: the
            closure is the second, perturbed evaluation), so the loop evaluates once first.
    """

    closure_calls: int = 1
    create_graph: bool = False
    modes: bool = False
    random: bool = False
    evaluate_first: bool = False

    def why_not_population(self, name: str) -> str | None:
        """Why the members of a population cannot take this step together (one line), or
        None: a closure evaluated several times cannot be shared between members, and a second
        derivative through the stacked graph is not one with respect to a member's own
        parameters."""
        if self.closure_calls > 1:
            return (
                f"{name} evaluates the loss {self.closure_calls} times in a step (its closure), "
                "which members of a population cannot share"
            )
        if self.create_graph:
            return (
                f"{name} differentiates its gradients again (backward with create_graph), "
                "which needs each member's own graph"
            )
        if self.random:
            return (
                f"{name} draws from a global random generator in its step (torch's, numpy's or "
                "Python's), so members would draw each other's numbers"
            )
        return None


class StepError(ValueError):
    """The pre-flight step of an optimizer failed (one line: the class and the cause)."""


def has_modes(optimizer: Any) -> bool:
    return callable(getattr(optimizer, "train", None)) and callable(
        getattr(optimizer, "eval", None)
    )


def takes_closure(optimizer: Any) -> bool:
    """Whether ``optimizer.step`` has a ``closure`` parameter (positional or keyword)."""
    try:
        params = inspect.signature(optimizer.step).parameters
    except (TypeError, ValueError):
        return True
    return "closure" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def run_step(
    optimizer: Any, closure: Callable[[], Any], with_closure: bool, evaluate_first: bool = False
) -> int:
    """``optimizer.step(closure)`` (``with_closure``; after one evaluation where
    ``evaluate_first``) or ``closure(); optimizer.step()``; how many times the closure ran. A
    step that never ran it took no gradients: ``RuntimeError``."""
    calls = 0

    def counted() -> Any:
        nonlocal calls
        calls += 1
        return closure()

    if with_closure:
        if evaluate_first:
            counted()
        optimizer.step(counted)
    else:
        counted()
        optimizer.step()
    if calls == 0:
        raise RuntimeError(
            f"{type(optimizer).__name__}.step(closure) returned without calling the closure, so "
            "it never saw this step's gradients"
        )
    return calls


def build_optimizer(describe: str, build: Callable[[], Any]) -> Any:
    """``build()``; any exception its constructor raises becomes one line starting with
    ``describe`` (the class and its arguments)."""
    try:
        return build()
    except Exception as err:  # a package's own classes (NegativeLRError, NoClosureError, ...)
        raise StepError(f"{describe}: {one_line(err)}") from None


def preflight(
    cls: type,
    build: Callable[[nn.Module], Any],
    net: nn.Module,
    input_size: int,
    num_classes: int,
    describe: str | None = None,
) -> StepContract:
    """One step of ``build(net_copy)`` (an instance of ``cls``, its constructor's refusal one
    line starting with ``describe``) on a copy of ``net``, on a random
    minibatch (torch's random state is left as it was; numpy's and Python's too): the ``StepContract`` it showed, or
    ``StepError``. ``net`` itself is not touched."""
    declared = getattr(cls, "create_graph", None)
    graphs = (bool(declared),) if isinstance(declared, bool) else (False, True)
    # Each attempt on a fresh copy: a plain backward, else one that keeps the graph; the step
    # given NaN gradients first, so a step that reads them before calling its closure shows
    # it (non-finite weights), then again after one evaluation.
    attempts = [(g, first) for g in graphs for first in (False, True)]
    plain: StepContract | None = None
    failed: BaseException | None = None  # the plain backward's failure, if the graph's fails too
    with _isolated_randomness():
        for create_graph, evaluate_first in attempts:
            torch.manual_seed(0)
            # float64, whatever the net's dtype now: the Trainer's precision comes later, and a
            # setting that is finite in training must not overflow here (lr 1e300 in float32).
            probe = copy.deepcopy(net).double().train()
            params = list(probe.parameters())
            x, y = _minibatch(input_size, num_classes)
            optimizer = build_optimizer(describe or cls.__name__, lambda p=probe: build(p))
            modes = has_modes(optimizer)
            for p in params:
                p.grad = torch.full_like(p, float("nan"))  # stale: a step must not use them
            try:
                if modes:
                    optimizer.train()
                before = _random_states()
                closure = _closure(probe, optimizer, x, y, create_graph)
                calls = run_step(optimizer, closure, takes_closure(optimizer), evaluate_first)
                random = _random_states() != before
            except Exception as err:
                if not evaluate_first:
                    continue  # perhaps it needed gradients before its closure
                if not create_graph and len(graphs) > 1:
                    # Perhaps a second-order step: it shows by succeeding with the graph kept,
                    # whatever its error said. If that fails too, the plain failure is the
                    # cause, unless it was a missing graph.
                    failed = None if _needs_graph(err) else err
                    continue
                raise StepError(
                    f"{cls.__name__}: the first step failed ({one_line(failed or err)}); "
                    "the pre-flight step on one minibatch, before anything trained"
                ) from None
            contract = StepContract(calls, create_graph, modes, random, evaluate_first)
            _check_state_round_trip(cls, optimizer)
            if all(bool(torch.isfinite(p).all()) for p in params):
                return contract
            if not evaluate_first:
                plain = contract  # it stepped on the stale gradients: evaluate before the step
                continue
            # Non-finite either way: the settings diverge (a huge lr), which training reports.
            return plain if plain is not None else contract
    raise AssertionError("unreachable")


def first_step_size(build: Callable[[list[nn.Parameter]], Any]) -> float | None:
    """How far one step of ``build(params)`` moves the weights of a small float64 MLP (40-16-10,
    torch's initialisation, seed 0) on a random minibatch, relative to their norm
    (``||w1 - w0|| / ||w0||``; ``inf`` where they stop being finite); ``None`` where the
    optimizer cannot be built or stepped so (it needs settings or groups). Torch's, numpy's and
    Python's random states are left as they were."""
    with _isolated_randomness():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 10)).double()
        before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
        x, y = _minibatch(40, 10)
        try:
            optimizer = build(list(net.parameters()))
            if has_modes(optimizer):
                optimizer.train()
            closure = _closure(net, optimizer, x, y, create_graph=False)
            run_step(optimizer, closure, takes_closure(optimizer), evaluate_first=False)
        except Exception:
            return None
        after = torch.cat([p.detach().flatten() for p in net.parameters()])
    if not bool(torch.isfinite(after).all()):
        return math.inf
    return float((after - before).norm() / before.norm())


def _check_state_round_trip(cls: type, optimizer: Any) -> None:
    """Every checkpoint saves ``optimizer.state_dict()`` and a resume loads it: a class whose
    state cannot make that round trip after a step is refused now, not at the first epoch's end
    (torch-optimizer's Lookahead never calls ``Optimizer.__init__``, so torch's ``state_dict``
    fails on it)."""
    try:
        optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    except Exception as err:
        raise StepError(
            f"{cls.__name__}: its state_dict() round trip failed after one step ({one_line(err)}), "
            "and every checkpoint saves it; the pre-flight step, before anything trained"
        ) from None


@contextlib.contextmanager
def _isolated_randomness() -> Iterator[None]:
    """Torch's (CPU), numpy's and Python's random states as they were, whatever runs inside."""
    saved = (np.random.get_state(), pyrandom.getstate())
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        np.random.set_state(saved[0])
        pyrandom.setstate(saved[1])


def _minibatch(input_size: int, num_classes: int) -> tuple[Tensor, Tensor]:
    """A random float64 minibatch of ``PREFLIGHT_BATCH`` examples and their labels."""
    x = torch.randn(PREFLIGHT_BATCH, input_size, dtype=torch.float64)
    return x, torch.randint(num_classes, (PREFLIGHT_BATCH,))


def _closure(
    net: nn.Module, optimizer: Any, x: Tensor, y: Tensor, create_graph: bool
) -> Callable[[], Tensor]:
    def closure() -> Tensor:
        with torch.enable_grad():
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x), y)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
                loss.backward(create_graph=create_graph)
        return loss

    return closure


def _random_states() -> tuple[Any, ...]:
    """The global random generators' states (torch's CPU one, numpy's, Python's)."""
    return (
        torch.get_rng_state().tolist(),
        repr(np.random.get_state()),
        pyrandom.getstate(),
    )


def _needs_graph(err: BaseException) -> bool:
    """Whether a failure says a graph was missing (which of two errors to show; whether a step
    is second order is found by the retry with the graph kept)."""
    return isinstance(err, RuntimeError) and any(m in str(err) for m in _NO_GRAPH)


def one_line(err: BaseException) -> str:
    """An exception as one line: its message, with its class where that says more than a
    ValueError's or TypeError's would (``NegativeLRError: ...``)."""
    text = " ".join(str(err).split())
    if text and isinstance(err, (TypeError, ValueError)):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
