"""Study storages fail in one line, in bounded time, without passwords, and survive races."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import TINY_SAMPLES

from lightning_opt.cli.main import cli_main
from lightning_opt.core.search_space import SearchParam
from lightning_opt.tuning import claims as studies
from lightning_opt.tuning import storage as storage_module
from lightning_opt.tuning.claims import open_study
from lightning_opt.tuning.storage import open_storage, redact

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SPACE = (SearchParam("lr", 1e-4, 1.0, log=True),)

# (url, what redact must show, the secrets that must not appear)
REDACTED = [
    # SQLAlchemy's rule: the password runs to the last "@"-free stretch, slashes included
    ("postgresql://user:se/cret@host/db", "postgresql://user:***@host/db", ["se/cret", "cret"]),
    (
        "postgresql://user:secret@host/db?password=other",
        "postgresql://user:***@host/db?password=***",
        ["secret", "other"],
    ),
    ("postgresql://:secret@host/db", "postgresql://:***@host/db", ["secret"]),
    ("mysql+pymysql://u:p%40ss@h/d", "mysql+pymysql://u:***@h/d", ["p%40ss", "p@ss", "40ss"]),
    (
        "postgresql+psycopg://u@h:5432/d?passwd=hunter2&sslmode=require",
        "postgresql+psycopg://u@h:5432/d?passwd=***&sslmode=require",
        ["hunter2"],
    ),
    (
        "postgresql://u@h/d?sslpassword=hunter2&PASSWORD=hunter3",
        "postgresql://u@h/d?PASSWORD=***&sslpassword=***",
        ["hunter2", "hunter3"],
    ),
    # an unescaped "@" in the password: SQLAlchemy's password is "p", its host "ss@host"
    ("postgresql://user:p@ss@host/db", "postgresql://user:***@***@host/db", ["p@ss", "ss@"]),
    ("postgresql://u:pw0rd@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db", ["pw0rd"]),
    ("postgresql://u:pa ss#x?y@h/d", "postgresql://u:***@h/d", ["pa ss", "#x?y"]),
    # what SQLAlchemy refuses keeps only its scheme
    ("postgresql://u:secret@h:notaport/db", "postgresql://***", ["secret"]),
    ("u:secret@h://x", "***://***", ["secret"]),
    # no password at all, or no URL at all: unchanged
    ("sqlite:///runs/optuna.db", "sqlite:///runs/optuna.db", []),
    ("postgresql://u@h/d", "postgresql://u@h/d", []),
    ("runs/journal.log", "runs/journal.log", []),
    ("/tmp/some dir/optuna:journal.log", "/tmp/some dir/optuna:journal.log", []),
]


@pytest.mark.parametrize(("url", "shown", "secrets"), REDACTED, ids=[u for u, _, _ in REDACTED])
def test_redact_hides_every_password_sqlalchemy_reads(url, shown, secrets):
    assert redact(url) == shown
    for secret in secrets:
        assert secret not in redact(url)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections and never answers; stops by itself
    after 30 s at the latest, and at teardown."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)  # keep it open, say nothing
        for conn in held:
            conn.close()
        server.close()

    thread = threading.Thread(target=serve, name="silent-server", daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)


def test_a_server_that_never_answers_times_out_in_one_line(silent_server):
    url = f"postgresql+psycopg://u:hunter22@127.0.0.1:{silent_server}/db?password=other7"
    start = time.monotonic()
    with pytest.raises(ValueError) as info:
        open_storage(url, connect_timeout=1)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert elapsed < 6, f"took {elapsed:.1f} s"  # psycopg waits at least 2 s
    assert "\n" not in message
    assert message.startswith(
        f"cannot open the study storage postgresql+psycopg://u:***@127.0.0.1:{silent_server}/db"
        "?password=***: timed out after 1 s"
    ), message
    assert "hunter22" not in message and "other7" not in message


def test_a_refused_connection_is_one_line_without_the_password():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg://u:hunter22@127.0.0.1:{port}/db"
    with pytest.raises(ValueError, match=r"^cannot open the study storage .*refused") as info:
        open_storage(url)
    assert "hunter22" not in str(info.value) and "\n" not in str(info.value)


def test_a_driver_message_that_repeats_the_password_is_scrubbed():
    # "p@sswd" unescaped: the driver is asked to resolve host "sswd@localhost" and says so
    with pytest.raises(ValueError, match="cannot open the study storage") as info:
        open_storage("postgresql+psycopg://user:p@sswd@localhost:1/db", connect_timeout=1)
    assert "sswd" not in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://u:hunter22@h/0", "unknown storage scheme 'redis' in redis://u:***@h/0"),
        ("mysql+nosuchdriver://u:hunter22@h/d", "cannot open the study storage mysql+no"),
        ("postgresql://u:hunter22@h:port/d", "cannot parse the storage URL postgresql://***"),
    ],
)
def test_every_other_error_is_redacted(url, message):
    with pytest.raises(ValueError) as info:
        open_storage(url)
    assert message in str(info.value) and "hunter22" not in str(info.value)


class _Recorder:
    """Stands in for ``RDBStorage``: records the engine arguments it was given."""

    def __init__(self, url: str, engine_kwargs: dict, **_: object) -> None:
        self.url, self.engine_kwargs = url, engine_kwargs


@pytest.mark.parametrize(
    ("url", "connect_args"),
    [
        ("postgresql://u@h/d", {"connect_timeout": 7}),
        ("postgresql+psycopg://u@h/d", {"connect_timeout": 7}),
        ("postgresql+psycopg2://u@h/d", {"connect_timeout": 7}),
        ("postgresql+pg8000://u@h/d", {"timeout": 7}),
        ("mysql://u@h/d", {"connect_timeout": 7}),
        ("mysql+pymysql://u@h/d", {"connect_timeout": 7}),
        ("mysql+mysqlconnector://u@h/d", {"connection_timeout": 7}),
        ("postgresql://u@h/d?connect_timeout=30", None),  # the URL's own value wins
        ("sqlite:///{tmp}/optuna.db", {"timeout": 60}),  # waits for another worker's write
    ],
)
def test_connect_timeout_reaches_the_driver(url, connect_args, monkeypatch, tmp_path):
    monkeypatch.setattr(storage_module, "RDBStorage", _Recorder)
    storage = open_storage(url.format(tmp=tmp_path), connect_timeout=7)
    args = dict(storage.engine_kwargs.get("connect_args") or {})
    args.pop("factory", None)  # SQLite's write-ahead log: the next test
    assert (args or None) == connect_args


@pytest.mark.parametrize("network", [False, True])
def test_sqlite_writes_ahead_on_a_local_disk_only(network, tmp_path, monkeypatch):
    monkeypatch.setattr(storage_module, "_on_network_filesystem", lambda path: network)
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    with storage.engine.connect() as connection:
        mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
    assert mode == ("delete" if network else "wal")


def test_network_filesystems_are_recognised():
    table = (
        "/dev/sda1 / ext4 rw 0 0\n"
        "server:/home /home nfs4 rw 0 0\n"
        "/dev/sdb1 /home/me/local\\040disk xfs rw 0 0\n"
        "me@host:/x /mnt/ssh fuse.sshfs rw 0 0\n"
    )
    assert not storage_module._on_network_filesystem(Path("/tmp/optuna.db"), table)
    assert storage_module._on_network_filesystem(Path("/home/me/optuna.db"), table)
    assert not storage_module._on_network_filesystem(Path("/home/me/local disk/optuna.db"), table)
    assert storage_module._on_network_filesystem(Path("/mnt/ssh/study/optuna.db"), table)
    assert not storage_module._on_network_filesystem(Path("/homework/optuna.db"), table)


def test_a_read_only_sqlite_study_still_opens(tmp_path, monkeypatch):
    """A database that cannot switch to the write-ahead log keeps SQLite's defaults."""
    with monkeypatch.context() as patch:  # made where no write-ahead log is used
        patch.setattr(storage_module, "_on_network_filesystem", lambda path: True)
        _real_db(tmp_path / "optuna.db")
    url = f"sqlite:///file:{tmp_path / 'optuna.db'}?mode=ro&uri=true"
    study = optuna.load_study(study_name="real", storage=open_storage(url))
    assert len(study.trials) == 40


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0, ValueError, "connect_timeout must be at least 1 s, got 0"),
        (2.5, TypeError, "connect_timeout must be whole seconds, got 2.5"),
    ],
)
def test_bad_connect_timeout(value, error, match):
    with pytest.raises(error, match=match):
        open_storage("postgresql://u@h/d", connect_timeout=value)


def _real_db(path: Path) -> None:
    storage = open_storage(f"sqlite:///{path}")
    study = open_study(storage, "real", SPACE, "val/loss")
    for _ in range(40):
        study.enqueue_trial({"lr": 0.01})
    storage.engine.dispose()


@pytest.mark.parametrize("damage", ["random bytes", "truncated to 50 bytes", "truncated by half"])
def test_a_damaged_sqlite_file_is_one_line(damage, tmp_path):
    path = tmp_path / "optuna.db"
    if damage == "random bytes":
        path.write_bytes(os.urandom(8192))
        reason = "file is not a database"
    else:
        _real_db(path)
        blob = path.read_bytes()
        path.write_bytes(blob[:50] if damage.endswith("50 bytes") else blob[: len(blob) // 2])
        reason = "(file is not a database|database disk image is malformed)"
    with pytest.raises(ValueError) as info:
        open_study(open_storage(f"sqlite:///{path}"), "real", SPACE, "val/loss")
    message = str(info.value)
    assert "\n" not in message
    prefix = f"cannot open the study storage sqlite:///{path}: "
    assert message.startswith(prefix), message
    assert re.fullmatch(
        reason + "; move it away or choose another --storage", message[len(prefix) :]
    ), message


def test_tune_on_a_damaged_sqlite_file_says_so_in_one_line(data_cache, tmp_path, capsys):
    db = tmp_path / "optuna.db"
    db.write_bytes(os.urandom(8192))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            ["tune", "--optimizer=gnw", f"--data.num_samples={TINY_SAMPLES}",
             f"--data.cache_dir={data_cache}", f"--storage=sqlite:///{db}",
             f"--output_dir={tmp_path / 'out'}", "--n_trials=1"]
        )  # fmt: skip
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"lightning_opt: error: cannot open the study storage sqlite:///{db}: "
        "file is not a database; move it away or choose another --storage"
    )


def _race(url: str, launchers: int = 8) -> tuple[list[str], list[BaseException]]:
    """``launchers`` threads open the storage and the study at the same moment."""
    barrier = threading.Barrier(launchers)
    names: list[str] = []
    errors: list[BaseException] = []

    def launch() -> None:
        barrier.wait(timeout=30)
        try:
            names.append(open_study(open_storage(url), "race", SPACE, "val/loss").study_name)
        except Exception as err:  # reported by the test, with all the others
            errors.append(err)

    threads = [threading.Thread(target=launch) for _ in range(launchers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return names, errors


@pytest.mark.parametrize("attempt", range(3))  # the race is lost differently each time
def test_launchers_racing_on_a_new_sqlite_study_all_succeed(attempt, tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    names, errors = _race(url)
    assert not errors, [str(e) for e in errors]
    assert names == ["race"] * 8
    storage = open_storage(url)
    assert optuna.get_all_study_names(storage) == ["race"]
    study = optuna.load_study(study_name="race", storage=storage)
    assert set(study.user_attrs) == {"lightning_opt:search_space", "lightning_opt:objective"}


def test_a_race_loser_still_refuses_other_settings(tmp_path, monkeypatch):
    """The launcher that loses the creation race checks the winner's study like any other."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_storage(url)
    open_study(storage, "race", SPACE, "val/loss")
    real_load = optuna.load_study
    calls = []

    def load_as_if_not_there_yet(**kwargs):
        calls.append(kwargs["study_name"])
        if len(calls) == 1:
            raise KeyError("Record does not exist.")  # it was created just after this look
        return real_load(**kwargs)

    monkeypatch.setattr(optuna, "load_study", load_as_if_not_there_yet)
    with pytest.raises(ValueError, match="study 'race' exists with another objective"):
        open_study(open_storage(url), "race", SPACE, "train/loss")
    assert calls == ["race", "race"]


def test_a_trial_retried_by_the_heartbeat_samples_as_the_trial_it_replaces(tmp_path):
    """A worker killed between claiming a trial and recording itself on it leaves no trace for
    tune's own retry; Optuna's heartbeat fails and re-enqueues it. The re-run must sample what
    the dead trial would have: the same seed, reported under the same number."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_storage(url, heartbeat_interval=1, grace_period=1)
    study = open_study(storage, "stale", SPACE, "val/loss")
    studies.top_up(study, 2)
    first, _ = studies.claim_waiting_trial(study, storage, 2, sampler_seed=5)
    lr_first = first.suggest_float("lr", 1e-4, 1.0, log=True)
    dead, _ = studies.claim_waiting_trial(
        study, storage, 2, sampler_seed=5
    )  # killed before sampling
    study.tell(first, 1.0)
    time.sleep(2.5)  # no heartbeat: stale
    optuna.storages.fail_stale_trials(study)
    rerun, _ = studies.claim_waiting_trial(study, storage, 2, sampler_seed=5)
    assert rerun.number == 2
    frozen = study.trials[rerun.number]
    assert studies.original_number(frozen) == dead.number == 1

    fresh_storage = open_storage(f"sqlite:///{tmp_path / 'fresh.db'}")
    fresh = open_study(fresh_storage, "s", SPACE, "val/loss")
    studies.top_up(fresh, 2)
    for _ in range(2):  # an uninterrupted study: trial 1 samples after trial 0 finished
        trial, _ = studies.claim_waiting_trial(fresh, fresh_storage, 2, sampler_seed=5)
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        fresh.tell(trial, 1.0)
    assert lr != lr_first
    assert rerun.suggest_float("lr", 1e-4, 1.0, log=True) == lr  # what trial 1 samples


def _units(tmp_path: Path, seeds: list[int]):
    from lightning_opt.experiments.final_units import FinalUnits
    from lightning_opt.tuning.trials import TuneOptions

    options = TuneOptions(
        n_trials=1, n_workers=1, storage=f"sqlite:///{tmp_path / 'units.db'}", study_name="e.a",
        seed=0, pruner="none", objective="final", output_dir=str(tmp_path), heartbeat_interval=1,
        grace_period=2, max_retry=3,
    )  # fmt: skip
    return FinalUnits.open(options, seeds, {"run": 1})


def test_final_run_units_run_each_seed_once_and_come_back_after_a_dead_worker(tmp_path):
    """Two launchers that planned the same seeds at once: only the first unit of each seed is
    claimed. A unit whose worker stops beating is failed by the heartbeat and its seed claimed
    again; a recorded result is every process's."""
    first, second = _units(tmp_path, [0, 1]), _units(tmp_path, [0, 1])
    first.plan()
    for seed in (0, 1):  # the other launcher's plan, made before it saw the first one's
        second.study.enqueue_trial({}, user_attrs={"seed": seed})
    batch = first.claim(limit=5)
    assert sorted(seed for *_, seed in batch) == [0, 1]
    assert second.claim(limit=5) == []  # the duplicates are never claimable
    (trial0, _, _), (trial1, _, _) = sorted(batch, key=lambda b: b[2])
    first.record(trial0, {"seed": 0, "final_val_loss": 1.5})
    assert second.results() == {0: {"seed": 0, "final_val_loss": 1.5}}
    assert second.running_elsewhere() == [1]
    # Seed 1's worker died: no heartbeat within the grace period (2 s; SQLite's clock, which
    # Optuna compares heartbeats with, counts whole seconds: more than 2 s means 3).
    time.sleep(3.5)
    second.plan()
    ((trial, _, seed),) = second.claim(limit=5)
    assert seed == 1 and trial.number != trial1.number
    second.record(trial, {"seed": 1, "final_val_loss": 1.25})
    assert first.results() == {0: {"seed": 0, "final_val_loss": 1.5},
                               1: {"seed": 1, "final_val_loss": 1.25}}  # fmt: skip
    states = [t.state.name for t in first.study.trials]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1


def test_two_launchers_topping_up_one_sqlite_study_at_once_plan_n_trials(tmp_path, monkeypatch):
    """Two launchers that count a study's trials at the same moment would each enqueue the
    missing ones; on SQLite the count and the enqueueing hold the claim lock, so the study
    holds exactly ``n_trials``."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    open_study(open_storage(url), "both", SPACE, "val/loss")
    real = studies.count_states

    def slow_count(study):  # widen the window between counting and enqueueing
        counts = real(study)
        time.sleep(0.3)
        return counts

    monkeypatch.setattr(studies, "count_states", slow_count)
    added = []

    def launcher() -> None:
        storage = open_storage(url)
        study = open_study(storage, "both", SPACE, "val/loss")
        added.append(studies.top_up(study, 3, storage))

    threads = [threading.Thread(target=launcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(added) == [0, 3]
    assert len(optuna.load_study(study_name="both", storage=url).trials) == 3


def _child_prefix(url: str, conn) -> None:
    from lightning_opt.tuning.storage import open_storage

    conn.send(open_storage(url)._worker_id_prefix)
    conn.close()


def test_a_forked_worker_opens_its_own_storage(tmp_path):
    """Within one command a storage is reused, but never across a fork: two forked workers
    sharing the parent's journal storage shared its worker id and could both claim one trial
    (seen as 'Trial#2 has already finished' in a two-worker tune)."""
    import multiprocessing

    from lightning_opt.tuning.storage import one_per_command, open_storage

    url = str(tmp_path / "journal.log")
    with one_per_command():
        parent = open_storage(url)
        assert open_storage(url) is parent  # reused within the process
        ctx = multiprocessing.get_context("fork")
        prefixes = []
        for _ in range(2):
            receive, send = ctx.Pipe(duplex=False)
            child = ctx.Process(target=_child_prefix, args=(url, send))
            child.start()
            prefixes.append(receive.recv())
            child.join(60)
            assert child.exitcode == 0
    assert len({parent._worker_id_prefix, *prefixes}) == 3


def test_a_storage_failure_names_a_cause_that_says_something():
    """Issue 31, 10c: an outage ended every process with the cause "()": a driver error whose
    text has no words gives way to a cause that has some, else to its type."""
    import sqlalchemy.exc

    from lightning_opt.tuning.storage import storage_failure

    url = "postgresql+psycopg://u@db/x"

    def chain(inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException as err:
                raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(())) from err
        except sqlalchemy.exc.OperationalError as err:
            wrapped = optuna.exceptions.StorageInternalError(
                "An exception is raised during the commit."
            )
            wrapped.__cause__ = err
            return wrapped

    refused = storage_failure(chain(ConnectionRefusedError("connection refused")), url)
    assert refused.endswith("failed while the study ran: connection refused; check it and run "
                            "the same command again to resume")  # fmt: skip
    assert "()" not in refused
    silent = storage_failure(chain(ConnectionResetError()), url)
    assert "()" not in silent and "(no message)" in silent
