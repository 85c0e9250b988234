"""Files written whole or not at all: each writer writes a temporary file of its own beside the
target and renames it over the target, so a reader never sees half a file and concurrent writers
(two ``tune`` launchers on one study, threads) never write into each other's; the last rename
wins, with a complete file."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def temporary_path(path: Path) -> Path:
    """A hidden temporary name beside ``path``, unique to this process and thread
    (``.importance.html.<pid>.<thread>.tmp``); ``replace`` it onto ``path`` when written."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def write_text(path: Path, text: str) -> None:
    """``text`` as the whole of ``path``, or nothing (an interrupted write leaves the old file)."""
    tmp = temporary_path(path)
    tmp.write_text(text)
    tmp.replace(path)
