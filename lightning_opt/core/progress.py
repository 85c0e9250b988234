"""What a long command says while it runs, and ``--quiet``.

``say`` prints a progress line (a trial's result, a population's epoch, a workload's header);
``command`` counts a command's units (tuning trials and final runs) done of planned, with an
estimate of the time left: on a terminal as a live bar below the lines, in a log or CI
as a plain line at most every ``LIGHTNING_OPT_PROGRESS_EVERY`` seconds (default 30). Units are
counted once each, whichever process finished them, so a command that shares its storage
with others counts their work too. ``--quiet`` silences all of it; results, warnings and
errors still print.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Hashable, Iterable, Iterator

#: Whether progress is silenced (``--quiet``).
QUIET = False


def every() -> float:
    """Seconds between two plain progress lines (``LIGHTNING_OPT_PROGRESS_EVERY``, default 30)."""
    try:
        return max(0.0, float(os.environ.get("LIGHTNING_OPT_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


class Units:
    """A command's units, done of planned, shown as they are done."""

    def __init__(self, planned: int, what: str) -> None:
        self.planned, self.what = planned, what
        self.done: set[Hashable] = set()
        self.start = self.shown = time.perf_counter()
        #: On a terminal: the width of the live status line kept below the lines.
        self.live = 0 if QUIET else _terminal_columns()
        self.draw()

    def status(self) -> str:
        count = min(len(self.done), self.planned)
        elapsed = time.perf_counter() - self.start
        left = f", ~{elapsed / count * (self.planned - count):.0f} s left" if count else ""
        return (f"progress: {count} of {self.planned} {self.what}, "
                f"{100 * count / self.planned:.0f}%, {elapsed:.0f} s so far{left}")  # fmt: skip

    def draw(self) -> None:
        """The live status line, redrawn in place (a terminal only)."""
        if self.live:
            count = min(len(self.done), self.planned)
            width = 24
            filled = round(width * count / self.planned)
            bar = "[" + "#" * filled + "." * (width - filled) + "] "
            sys.stderr.write("\r\x1b[K" + (bar + self.status())[: self.live - 1])
            sys.stderr.flush()

    def clear(self) -> None:
        if self.live:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    def seen(self, keys: Iterable[Hashable]) -> None:
        new = set(keys) - self.done
        self.done |= new
        if not new or QUIET:
            return
        if self.live:
            self.draw()
            return
        now = time.perf_counter()
        if now - self.shown < every() and len(self.done) < self.planned:
            return
        self.shown = now
        print(self.status(), flush=True)


def _terminal_columns() -> int:
    """The width of the terminal stdout and stderr show on; 0 when either is no terminal."""
    try:
        if not (sys.stdout.isatty() and sys.stderr.isatty()):
            return 0
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):  # a stream without a file descriptor
        return 0


_UNITS: Units | None = None


@contextlib.contextmanager
def command(planned: int, what: str = "units (trials and final runs)") -> Iterator[None]:
    """Count the units of the command while the block runs; inside another command's count
    (a benchmark's workloads), the outer one goes on counting."""
    global _UNITS
    if _UNITS is not None or planned < 1:
        yield
        return
    _UNITS = Units(planned, what)
    try:
        yield
    finally:
        _UNITS.clear()
        _UNITS = None


def seen(keys: Iterable[Hashable]) -> None:
    """Units that are done (by this process or another), each counted once."""
    if _UNITS is not None:
        _UNITS.seen(keys)


def say(text: str) -> None:
    """A progress line (none with ``--quiet``), above the bar on a terminal."""
    if QUIET:
        return
    if _UNITS is not None and _UNITS.live:  # the line above the live status line
        _UNITS.clear()
        print(text, flush=True)
        _UNITS.draw()
    else:
        print(text, flush=True)
