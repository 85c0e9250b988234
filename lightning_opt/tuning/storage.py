"""Optuna storages by URL (SQLite, PostgreSQL, MySQL, a journal file), opened within a connect
timeout, with every error one ``ValueError`` line that never shows a password (``redact``), races
between simultaneous launchers retried, and SQLite's write-ahead log where the disk allows it."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from sqlalchemy.engine import URL, make_url

RDB_SCHEMES = ("sqlite", "postgresql", "mysql")


_MASK = "***"


_SECRET_KEY = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)  # query keys that hold one


# Errors of launchers racing to create the tables, the version stamp or the study: retried.
_RACE = re.compile(r"already exists|database is locked|duplicate key|unique constraint", re.I)


_RACE_ATTEMPTS = 8


_DAMAGED = re.compile(r"not a database|malformed", re.IGNORECASE)  # SQLite's words


_TIMED_OUT = re.compile(r"time(d)?[ -]?out", re.IGNORECASE)


# The connect-timeout argument of drivers that do not call it ``connect_timeout``.
_TIMEOUT_ARG = {"pg8000": "timeout", "mysqlconnector": "connection_timeout"}


_T = TypeVar("_T")
_jitter = random.Random()  # never the global `random`: seeded runs must not see our retries


class _StorageError(ValueError):
    """One line about a storage that cannot be used; its URL and reason already redacted."""


class StorageMachineError(_StorageError):
    """The storage failed for a reason of the machine, not the input (a full disk, an I/O
    error): a runtime failure (exit 1), though found on opening."""


#: SQLite's and the servers' words for a machine failure.
_MACHINE = re.compile(r"disk is full|disk I/O error|no space left|out of memory", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` with every password shown as ``***``, parsed the way SQLAlchemy parses it.

    Hidden: the URL's password (``user:PASSWORD@host``) and query values whose key names a
    secret (``?password=``, ``?passwd=``, ``?sslpassword=``...). A journal file path (no
    ``://``) is returned unchanged; a string SQLAlchemy cannot parse keeps only its scheme.
    """
    if "://" not in url:
        return url
    try:
        parsed = make_url(url)
    except Exception:  # ArgumentError, or ValueError for a bad port, and others
        scheme = url.split("://", 1)[0]
        if not re.fullmatch(r"[A-Za-z][\w+.-]*", scheme):  # "u:pw@host://..." is no scheme
            scheme = _MASK
        return f"{scheme}://{_MASK}"
    query = {k: _MASK if _SECRET_KEY.search(k) else v for k, v in parsed.query.items()}
    host = parsed.host
    if host and "@" in host:  # user:p@ss@host: SQLAlchemy's password is "p", its host "ss@host"
        host = f"{_MASK}@{host.rsplit('@', 1)[1]}"
    shown = parsed.set(host=host, query=query).render_as_string(hide_password=True)
    return shown.replace("=%2A%2A%2A", f"={_MASK}")


def _secrets(url: str | None) -> list[str]:
    """What ``redact`` hides in ``url``, to scrub from a driver's own error text too."""
    if not url or "://" not in url:
        return []
    try:
        parsed = make_url(url)
    except Exception:  # unparsable: hide everything after the scheme
        return [url.split("://", 1)[1]]
    found = [parsed.password or ""]
    if parsed.host and "@" in parsed.host:
        found.append(parsed.host.rsplit("@", 1)[0])
    for key, value in parsed.query.items():
        if _SECRET_KEY.search(key):
            found += [value] if isinstance(value, str) else list(value)
    return [s for s in found if s]


def _scrub(text: str, url: str | None) -> str:
    """``text`` with ``url``'s secrets masked (short ones only where they stand alone)."""
    for secret in sorted(_secrets(url), key=len, reverse=True):
        pattern = re.escape(secret)
        if len(secret) < 4:  # a 2-letter password must not mask every "ss" of the message
            pattern = rf"(?<![\w]){pattern}(?![\w])"
        text = re.sub(pattern, _MASK, text)
    return text


def _reason(err: BaseException) -> str:
    """The first line of the driver's own message (SQLAlchemy wraps it as ``orig``)."""
    while getattr(err, "orig", None) is None and err.__cause__ is not None:
        err = err.__cause__  # Optuna's StorageInternalError wraps SQLAlchemy's error
    source = getattr(err, "orig", None) or err
    text = str(source).strip()
    if not re.search(r"\w", text):  # "" or "()": a driver error without words names its type
        return f"{type(source).__name__} (no message)"
    return text.splitlines()[0]


def storage_failure(err: BaseException, url: str | None) -> str | None:
    """One line for a storage error raised while a study ran (a damaged SQLite page, a server
    gone), or None where ``err`` is not one."""
    chain = _causes(err, 8, context=True)
    storage_errors = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)
    if not any(isinstance(e, storage_errors) for e in chain):
        return None
    shown = redact(url) if url else "the study storage"
    # The deepest cause that says something (a wrapper's "()" says nothing: issue 31, 10c).
    reasons = [_reason(e) for e in reversed(chain)]
    reason = _scrub(next((r for r in reasons if not r.endswith("(no message)")), reasons[0]), url)
    if _DAMAGED.search(reason) and url and url.startswith("sqlite"):
        way_out = "move it away or choose another --storage"
    else:
        way_out = "check it and run the same command again to resume"
    return f"the study storage {shown} failed while the study ran: {reason}; {way_out}"


def _causes(err: BaseException, limit: int, context: bool = False) -> list[BaseException]:
    """``err`` and what raised it (``__cause__``; with ``context``, an unsuppressed
    ``__context__`` too), at most ``limit`` deep."""
    chain = [err]
    while len(chain) < limit:
        last = chain[-1]
        cause = last.__cause__
        if cause is None and context and not last.__suppress_context__:
            cause = last.__context__
        if cause is None:
            break
        chain.append(cause)
    return chain


def _is_race(err: BaseException) -> bool:
    chain = _causes(err, 5)
    return any(isinstance(e, sqlalchemy.exc.IntegrityError) or _RACE.search(str(e)) for e in chain)


def retry_races(what: Callable[[], _T], url: str | None, timeout: int | None = None) -> _T:
    """``what()``, again after a short random pause while it loses a race with another
    launcher; any other error, or the last race, becomes one ``ValueError`` line."""
    for attempt in range(1, _RACE_ATTEMPTS + 1):
        try:
            return what()
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
            if attempt < _RACE_ATTEMPTS and _is_race(err):
                time.sleep(_jitter.uniform(0.02, 0.1) * attempt)
                continue
            raise _storage_error(url, err, timeout) from None
    raise AssertionError("unreachable")


def _storage_error(url: str | None, err: BaseException, timeout: int | None) -> _StorageError:
    shown = redact(url) if url else "the study storage"
    reason = _scrub(_reason(err), url)
    if _DAMAGED.search(reason) and url and url.startswith("sqlite"):
        reason += "; move it away or choose another --storage"
    elif _MACHINE.search(reason):
        reason += "; free space or choose another --storage"
    elif timeout is not None and _TIMED_OUT.search(reason):
        reason = (
            f"timed out after {timeout} s ({reason}); check the host and port, "
            "or wait longer with --connect_timeout"
        )
    kind = StorageMachineError if _MACHINE.search(reason) else _StorageError
    return kind(f"cannot open the study storage {shown}: {reason}")


#: Every database storage this process opened (see ``close_all``).
_OPENED: weakref.WeakSet = weakref.WeakSet()


def close_all() -> None:
    """Close every database storage this process opened, as their garbage collection at exit
    does: SQLite then folds its write-ahead log back into the database file (a copy of the file
    alone holds every trial)."""
    for storage in list(_OPENED):
        fold_log(storage)
        storage.remove_session()
        storage.engine.dispose()


def fold_log(storage: BaseStorage) -> None:
    """Fold a SQLite storage's write-ahead log into its database file now (``PRAGMA
    wal_checkpoint(TRUNCATE)``), so the file alone holds every study and trial: a copy of it is
    complete, and a lost ``-wal`` file loses nothing. Other storages: nothing to do."""
    engine = getattr(storage, "engine", None)
    if engine is None or engine.dialect.name != "sqlite":
        return
    with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError), engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


#: Within ``one_per_command``: the storages opened so far, by process and ``open_storage``'s
#: arguments.
_REUSED: dict[tuple[int, StorageSettings], BaseStorage] | None = None


@contextlib.contextmanager
def one_per_command() -> Iterator[None]:
    """Within the block, ``open_storage`` of the same arguments gives the storage it opened
    first (a command's planning, tuning and finals share one connection pool per database),
    while its database is still there (a file that was deleted is opened afresh). When the
    block ends, however it ends, each SQLite database's log is folded into its file
    (``fold_log``)."""
    global _REUSED
    outer, _REUSED = _REUSED, {}
    opened = _REUSED
    try:
        yield
    finally:
        _REUSED = outer
        for storage in opened.values():
            fold_log(storage)


def open_storage(
    url: str,
    heartbeat_interval: int = 10,
    grace_period: int | None = None,
    max_retry: int = 3,
    connect_timeout: int = 10,
) -> BaseStorage:
    """An Optuna storage from a database URL or a journal file path; errors are one line.

    Args:
        url: ``sqlite:///FILE.db``, ``postgresql://USER@HOST/DB``, ``mysql://USER@HOST/DB`` (any
            SQLAlchemy driver, e.g. ``postgresql+psycopg://``), or a journal file path.
        heartbeat_interval: seconds between a running trial's heartbeats (database storages).
        grace_period: seconds without a heartbeat before a trial counts as dead; ``None`` =
            Optuna's default (twice ``heartbeat_interval``).
        max_retry: how often a dead worker's trial is re-enqueued.
        connect_timeout: seconds to wait for a PostgreSQL or MySQL server to answer before
            giving up with "timed out" (psycopg waits at least 2 s). SQLite always waits up to
            60 s for another worker's write instead; journal files do not connect.

    Launchers that open a new database at the same moment all succeed: losing the race to
    create its tables is retried. Within ``one_per_command`` the same arguments give the
    storage opened first.
    """
    settings = StorageSettings(url, heartbeat_interval, grace_period, max_retry, connect_timeout)
    reused = _REUSED
    if reused is None:
        return _open_storage(settings)
    # By process: a worker forked from the command's process opens its own. A storage is not
    # fork-safe: SQLAlchemy's pool would share the parent's connections, and a journal file's
    # claims are told apart by a worker id (a uuid of the storage object and the thread id,
    # which a fork copies), so two forked workers sharing one would both win the same trial.
    key = (os.getpid(), settings)
    storage = reused.get(key)
    if storage is None or not _still_there(url):
        storage = reused[key] = _open_storage(settings)
    return storage


class StorageSettings(NamedTuple):
    """``open_storage``'s arguments: what one opened storage stands for."""

    url: str
    heartbeat_interval: int
    grace_period: int | None
    max_retry: int
    connect_timeout: int


def sqlite_url(path: Path | str, flag: str = "--output_dir") -> str:
    """``sqlite:///PATH``, the URL of the study database at ``path``; ``ValueError`` (one line)
    for a path the URL would read otherwise (``?`` starts its query, ``#`` a fragment, ``%`` an
    escape: ``o?mode=ro/optuna.db`` would be the file ``o``), naming ``flag``."""
    text = str(path)
    bad = sorted(set(text) & set("?#%"))
    if bad:
        raise ValueError(
            f"{flag}: the study database {text} cannot be named in a SQLite URL (it holds "
            f"{' '.join(bad)}); choose a folder without ?, # or %, or give --storage"
        )
    return f"sqlite:///{text}"


def _still_there(url: str) -> bool:
    """Whether the file of a journal or SQLite storage (other databases: always) exists."""
    if "://" not in url:
        return Path(url).exists()
    if url.startswith("sqlite"):
        with contextlib.suppress(Exception):
            path = sqlite_file(make_url(url))
            return path is None or path.exists()
    return True


def _journal_problem(path: Path) -> str | None:
    """What makes ``path`` no journal that Optuna could replay and append to, else ``None``:
    every line a JSON object with a known ``op_code``, the last one ended (Optuna writes whole
    lines; it would append to a cut one and lose both)."""
    if not path.is_file():
        return None
    from optuna.storages.journal._storage import JournalOperation

    known = {int(op) for op in JournalOperation}
    with path.open("rb") as file:
        for number, line in enumerate(file, 1):
            if not line.endswith(b"\n"):
                return f"line {number} is cut short"
            try:
                entry = json.loads(line)
            except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
                return f"line {number}: {err}"
            if not isinstance(entry, dict) or entry.get("op_code") not in known:
                return f"line {number} is no journal operation"
    return None


def _open_storage(settings: StorageSettings) -> BaseStorage:
    """A new storage of ``settings`` (``open_storage``)."""
    url, heartbeat_interval, grace_period, max_retry, connect_timeout = settings
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        problem = _journal_problem(Path(url))
        if problem is None:
            try:
                return JournalStorage(JournalFileBackend(url))
            except (ValueError, KeyError, TypeError, AssertionError) as err:
                problem = _reason(err)
        raise ValueError(
            f"the journal storage {url} is not an Optuna journal file ({problem}); move it "
            "away or choose another --storage"
        )
    if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, int):
        raise TypeError(f"connect_timeout must be whole seconds, got {connect_timeout!r}")
    if connect_timeout < 1:
        raise ValueError(f"connect_timeout must be at least 1 s, got {connect_timeout}")
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in RDB_SCHEMES:
        raise ValueError(
            f"unknown storage scheme {scheme!r} in {redact(url)}; use sqlite:///FILE.db, "
            "postgresql://USER@HOST/DB, mysql://USER@HOST/DB or a journal file path"
        )
    try:
        parsed = make_url(url)
    except Exception as err:  # ArgumentError, ValueError (a port that is no number)
        raise ValueError(
            f"cannot parse the storage URL {redact(url)} ({_scrub(_reason(err), url)}); "
            "write it as DIALECT[+DRIVER]://USER[:PASSWORD]@HOST[:PORT]/DATABASE, "
            "with special characters of the password %-encoded (@ as %40)"
        ) from None
    engine_kwargs = _engine_kwargs(parsed, connect_timeout)
    if scheme == "sqlite" and sqlite_file(parsed) is not None:
        sqlite_file(parsed).parent.mkdir(parents=True, exist_ok=True)

    def connect() -> RDBStorage:
        storage = RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=max_retry
            ),
        )
        _OPENED.add(storage)
        return storage

    try:
        return retry_races(connect, url, connect_timeout)
    except ImportError as err:
        install = {
            "postgresql": "pip install 'lightning_opt[postgres]'",
            "mysql": "pip install PyMySQL and write mysql+pymysql://",
        }.get(scheme, "install the driver the URL names")
        raise ValueError(
            f"no database driver for {redact(url)} ({_scrub(str(err), url)}); {install}"
        ) from None
    except _StorageError:
        raise
    except Exception as err:  # e.g. Optuna's RuntimeError for an old schema
        raise _storage_error(url, err, connect_timeout) from None


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL (``sqlite:///file:PATH?mode=ro&uri=true`` too), or None for an
    in-memory database."""
    database = url.database
    if not database or database == ":memory:":
        return None
    if url.query.get("uri") == "true" and database.startswith("file:"):
        return Path(database.removeprefix("file:"))
    return Path(database)


def _engine_kwargs(url: URL, connect_timeout: int) -> dict[str, Any]:
    """SQLAlchemy engine arguments: SQLite waits for writes, servers answer in bounded time."""
    if url.get_backend_name() == "sqlite":
        args: dict[str, Any] = {"timeout": 60}  # wait for another worker's write
        database = sqlite_file(url)
        if database is not None and not _on_network_filesystem(database):
            args["factory"] = _WriteAheadConnection
        return {"connect_args": args}
    key = _TIMEOUT_ARG.get(url.get_driver_name(), "connect_timeout")
    if key in url.query:  # the URL's own ?connect_timeout= wins
        return {"pool_pre_ping": True}
    return {"pool_pre_ping": True, "connect_args": {key: connect_timeout}}


class _WriteAheadConnection(sqlite3.Connection):
    """A SQLite connection in write-ahead-log mode with ``synchronous=NORMAL``: a commit no longer
    waits for the disk (1.6 instead of 6.1 ms per ``trial.report``, perf/bench_storage.py);
    a killed process loses nothing committed, and a power cut at worst the last commits, never
    the database's consistency. A database that cannot switch (read-only) keeps the defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        with contextlib.suppress(sqlite3.Error):  # read-only, or not a database: found later
            self.execute("PRAGMA journal_mode=WAL")
            self.execute("PRAGMA synchronous=NORMAL")


_NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "lustre", "gpfs", "ceph"}


def _on_network_filesystem(path: Path, mount_table: str | None = None) -> bool:
    """Whether ``path`` lies on a network filesystem, where SQLite's write-ahead log does not
    work (its index is shared memory on one host); unknown counts as local. ``mount_table``:
    the text of ``/proc/mounts`` (read when not given)."""
    try:
        table = Path("/proc/mounts").read_text() if mount_table is None else mount_table
    except OSError:
        return False
    where = str(path.resolve().parent)
    best, kind = "", ""
    for fields in map(str.split, table.splitlines()):
        if len(fields) < 3:
            continue
        point, fstype = fields[1].replace("\\040", " "), fields[2]
        if (where == point or where.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, fstype
    return kind in _NETWORK_FILESYSTEMS or kind.startswith("fuse.sshfs")


def has_heartbeat(storage: BaseStorage) -> bool:
    return isinstance(storage, RDBStorage)
