"""SIGTERM handled as Ctrl-C, and the exit code that says which one stopped a command.

A batch system (SLURM, Kubernetes) sends SIGTERM before it kills a job. Every command treats it
as its Ctrl-C: the running trial or run stops at the next batch, is recorded as interrupted, the
resume line is printed, and the process exits with 143 (128 + 15) instead of 130 (128 + 2), so
the scheduler records the job as stopped, not as a success. A second signal stops at once, as a
second Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from types import FrameType

#: Exit codes of a command stopped by Ctrl-C and by SIGTERM.
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM

_received: list[int] = []


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Route SIGTERM to whatever handles SIGINT at the moment it arrives, for the command run
    inside (the previous handlers come back after it).

    SIGINT gets Python's own handler even where the process inherited it ignored (a command
    started with ``&`` from a script): a command honours Ctrl-C in every phase or in none.
    """
    _received.clear()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if handler is signal.SIG_IGN:  # shutting down already (Lightning ignores Ctrl-C then)
        if len(_received) > 1:
            os._exit(EXIT_SIGTERM)
        return
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)  # the command's own first-Ctrl-C handler
        return
    raise KeyboardInterrupt


def note_terminated() -> None:
    """A worker process this one waited for was stopped by SIGTERM: so is the command."""
    if not _received:
        _received.append(signal.SIGTERM)


def stopped_by_signal(exit_: SystemExit) -> bool:
    """Whether Lightning's ``SystemExit`` ends a run that Ctrl-C or SIGTERM stopped: its
    ``sys.exit(1)`` after a ``KeyboardInterrupt``, or its ``SIGTERMException``."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return isinstance(exit_, SIGTERMException) or isinstance(exit_.__context__, KeyboardInterrupt)


def terminated() -> bool:
    """Whether SIGTERM (not Ctrl-C) stopped this command."""
    return bool(_received)


def interrupt_exit_code() -> int:
    """143 after SIGTERM, else 130 (Ctrl-C)."""
    return EXIT_SIGTERM if terminated() else EXIT_SIGINT
