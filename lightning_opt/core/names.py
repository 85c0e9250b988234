"""Names that become folders (studies, experiments, arms), checked the same way everywhere."""

from __future__ import annotations

import re
from typing import Any

#: Letters, digits, ``_``, ``-`` and ``.``: no path separator can appear.
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
#: Room left in a file name (255 bytes on Linux, macOS and Windows) for what is added to a name
#: (``optuna.db-wal``, ``.<pid>.<thread>.tmp``, ``<experiment>.<arm>`` study names).
MAX_NAME_BYTES = 200


def check_name(kind: str, name: Any, flag: str) -> str:
    """``name`` if it is one folder name under the output directory, else ``ValueError`` (one
    line: what was wrong, what is allowed, the flag to change): not empty, letters, digits, ``_``,
    ``-`` and ``.`` only (no ``/``, no ``..`` or ``.``), at most ``MAX_NAME_BYTES`` bytes."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{flag}: the {kind} name is empty; give one (letters, digits, _ - .)")
    if not _NAME.fullmatch(name) or set(name) == {"."}:
        raise ValueError(
            f"{flag} {name!r}: {kind} names are letters, digits, '_', '-' or '.' (one folder "
            "under the output directory, never a path)"
        )
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError(
            f"{flag} {name[:24]}...: a {kind} name of {len(name.encode())} bytes is longer than "
            f"the {MAX_NAME_BYTES} a folder name can take here; shorten it"
        )
    return name
