"""Files written whole or not at all: each writer writes a temporary file of its own beside the
target and renames it over the target, so a reader never sees half a file and concurrent writers
(two ``tune`` launchers on one study, threads) never write into each other's; the last rename
wins, with a complete file. Every file the package writes goes through ``replacing``."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path


def temporary_path(path: Path, suffix: str = "") -> Path:
    """A hidden temporary name beside ``path``, unique to this process and thread
    (``.importance.html.<pid>.<thread>.tmp``, then ``suffix`` for a writer that insists on one:
    numpy's ``.npz``); ``replace`` it onto ``path`` when written."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp{suffix}")


@contextlib.contextmanager
def replacing(path: Path, suffix: str = "") -> Iterator[Path]:
    """The temporary path to write ``path``'s new content to; renamed onto ``path`` when the block
    ends, removed if it raises (the old file stays, whole)."""
    tmp = temporary_path(path, suffix)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def write_text(path: Path, text: str) -> None:
    """``text`` (UTF-8) as the whole of ``path``, or nothing (an interrupted write leaves the
    old file)."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def no_trace_if_refused(folder: Path) -> Iterator[None]:
    """If the block raises, the folders it created at ``folder`` and above, and any it left
    empty below them, are removed again: a refused command leaves no empty output folder (a
    folder that existed before stays as it is, whatever it holds)."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield
    except BaseException:
        if created:
            for root, _, _ in os.walk(created[-1], topdown=False):
                with contextlib.suppress(OSError):  # not empty: kept
                    os.rmdir(root)
        raise
