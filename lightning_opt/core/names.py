"""Names that become folders (studies, experiments, arms), checked the same way everywhere."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

#: Letters, digits, ``_``, ``-`` and ``.``: no path separator can appear.
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
#: Room left in a file name (255 bytes on Linux, macOS and Windows) for what is added to a name
#: (``optuna.db-wal``, ``.<pid>.<thread>.tmp``, ``<experiment>.<arm>`` study names).
MAX_NAME_BYTES = 200
#: The files lightning_opt writes beside the folders it names (an experiment's report and record,
#: a benchmark's leaderboard, a study's outputs and database): no name may be one of them.
RESERVED = frozenset({
    "results.json", "results.md", "runs.csv", "comparison.html", "comparison.png",
    "experiment.json", "leaderboard.json", "leaderboard.md", "leaderboard.html", "benchmark.json",
    "best.yaml", "history.html", "importance.html", "result.json", "config.yaml", "optuna.db",
    "optuna.db-wal", "optuna.db-shm", "optuna.db-journal", "optuna.db.claim.lock",
})  # fmt: skip


#: Upper bounds of the counts and sizes a command is given, checked before anything is queued:
#: a typo (``n_trials: 1e12``) is one line, not hours of queueing or a machine out of memory.
LIMITS = {
    "n_trials": 100_000,
    "seeds": 10_000,
    "population": 100_000,
    "n_workers": 1_024,
    "num_samples": 10_000_000,
    "final_seq_length": 100_000,
}


def check_limit(name: str, value: Any, flag: str | None = None) -> None:
    """Refuse (one line) a count or size above its bound in ``LIMITS``."""
    bound = LIMITS[name]
    if isinstance(value, int | float) and not isinstance(value, bool) and value > bound:
        raise ValueError(
            f"{flag or name} {value:g}: at most {bound:,} (a count this large is a typo more "
            "often than a plan; split the work into several commands)"
        )


def overlap(a: Path, b: Path) -> bool:
    """Whether folder ``a`` is ``b``, or holds it, or lies inside it (resolved: ``..`` and links
    followed): deleting one would delete (part of) the other."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a in b.parents or b in a.parents


def check_name(kind: str, name: Any, flag: str) -> str:
    """``name`` if it is one folder name under the output directory, else ``ValueError`` (one
    line: what was wrong, what is allowed, the flag to change): not empty, letters, digits, ``_``,
    ``-`` and ``.`` only (no ``/``, no ``..`` or ``.``), none of the tool's own file names
    (``RESERVED``), at most ``MAX_NAME_BYTES`` bytes."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{flag}: the {kind} name is empty; give one (letters, digits, _ - .)")
    if not _NAME.fullmatch(name) or set(name) == {"."}:
        raise ValueError(
            f"{flag} {name!r}: {kind} names are letters, digits, '_', '-' or '.' (one folder "
            "under the output directory, never a path)"
        )
    if name.casefold() in RESERVED:
        raise ValueError(
            f"{flag} {name!r}: lightning_opt writes a file of that name beside its {kind} "
            "folders; choose another name"
        )
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError(
            f"{flag} {name[:24]}...: a {kind} name of {len(name.encode())} bytes is longer than "
            f"the {MAX_NAME_BYTES} a folder name can take here; shorten it"
        )
    return name
