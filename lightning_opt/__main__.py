"""``python -m lightning_opt``: the CLI, then a prompt exit.

Once the command is over, the interpreter's own teardown (freeing every module of torch,
Lightning, SciPy, ...) takes 1-1.5 s on a 2-core machine and does nothing a user sees: this
exits as Python's normal exit does up to that point (non-daemon threads joined, exit handlers
run, the study storages closed, so SQLite folds its write-ahead log into the database file, and
the standard streams flushed), with the same exit status, and skips it. An uncaught exception
takes Python's usual path (its traceback, exit 1).
"""

import atexit
import contextlib
import os
import sys
import threading

try:  # torch, Lightning and jsonargparse load here (seconds): Ctrl-C is no traceback
    from lightning_opt.cli.main import cli_main
except KeyboardInterrupt:
    print("lightning_opt: interrupted while starting: nothing ran", file=sys.stderr)
    os._exit(130)


def _exit_status(exit_: SystemExit) -> int:
    """What Python's exit makes of ``SystemExit(code)`` (a message goes to stderr)."""
    code = exit_.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _exit(status: int) -> None:
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    if "lightning_opt.tuning.storage" in sys.modules:  # what the teardown would have closed
        sys.modules["lightning_opt.tuning.storage"].close_all()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: as Python's exit
            stream.flush()
    os._exit(status)


if __name__ == "__main__":
    try:
        cli_main()
    except SystemExit as exit_:
        _exit(_exit_status(exit_))
    _exit(0)
