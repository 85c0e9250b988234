"""`tune` on PostgreSQL, as on many machines: two workers share a study, one is killed mid-trial.

The fixture runs its own throwaway PostgreSQL server on 127.0.0.1 (as the ``postgres`` user when
the tests run as root, since the server refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import psycopg
import pytest
from conftest import TINY_SAMPLES
from optuna.trial import TrialState

from lightning_opt.data import load_mnist1d
from lightning_opt.tuning.claims import original_number

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MISSING = (
    "PostgreSQL server binaries not found (initdb, pg_ctl); "
    ".ci/run installs them with apt-get install -y postgresql"
)


def _server_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, newest PostgreSQL first."""
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += [Path(p) for p in reversed(versions)]
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class PostgresServer:
    port: int

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname=database, autocommit=True
        )

    def create_database(self, name: str) -> str:
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    @staticmethod
    def running_with_heartbeat(conn: psycopg.Connection) -> int:
        """RUNNING trials that have recorded a heartbeat and sampled their parameters (Optuna's
        RDB schema)."""
        row = conn.execute(
            "SELECT count(*) FROM trials JOIN trial_heartbeats USING (trial_id) "
            "WHERE trials.state = 'RUNNING' "
            "AND EXISTS (SELECT 1 FROM trial_params WHERE trial_params.trial_id = trials.trial_id)"
        ).fetchone()
        return row[0]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of its own on 127.0.0.1, trust authentication, stopped at teardown."""
    bindir = _server_bindir()
    if bindir is None:
        pytest.fail(MISSING)
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="lightning-opt-pg-", dir="/tmp"))
    if as_root:
        shutil.chown(base, user="postgres", group="postgres")
    data = base / "data"

    def run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(bindir / command[0]), *command[1:]]
        if as_root:
            if shutil.which("runuser"):
                argv = ["runuser", "-u", "postgres", "--", *argv]
            else:
                argv = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(argv)]
        # cwd: a directory the server user can enter; -l keeps the server off our pipes
        proc = subprocess.run(argv, cwd=base, capture_output=True, text=True, timeout=120)
        if check and proc.returncode:
            pytest.fail(
                f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return proc

    started = False
    try:
        run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--locale=C", "--no-sync")  # fmt: skip
        for _ in range(3):  # another process may take the free port between probe and start
            port = _free_port()
            options = f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off -c full_page_writes=off"
            proc = run("pg_ctl", "-D", str(data), "-l", str(base / "server.log"), "-o", options,
                       "-w", "-t", "60", "start", check=False)  # fmt: skip
            if proc.returncode == 0:
                started = True
                break
        if not started:
            log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
            pytest.fail(f"PostgreSQL did not start:\n{proc.stdout}{proc.stderr}{log}")
        yield PostgresServer(port)
    finally:
        if started:
            run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


class Worker:
    """``python -m lightning_opt tune ...`` in the background; its stdout lines as they come."""

    def __init__(self, args: list[str], cwd: Path, name: str) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # one core each
        self.stderr_path = cwd / f"{name}.stderr"
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lightning_opt", "tune", *args],
                cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
            )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def trial_lines(self) -> list[str]:
        return [line for line in self.lines if line.startswith("trial ")]

    def wait_for(self, predicate, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None and not self._reader.is_alive() and not predicate():
                pytest.fail(f"worker exited ({self.proc.returncode}) before {what}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return "\n".join(self.lines) + "\n" + self.stderr_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)


def _tune_args(url: str, data_cache: Path, tmp_path: Path, n_trials: int) -> list[str]:
    return [
        "--optimizer=adam",
        f"--data.num_samples={TINY_SAMPLES}",
        f"--data.cache_dir={data_cache}",
        "--data.batch_size=10",
        "--trainer.max_epochs=150",  # about 2.5 s a trial on one core: longer than B takes to start
        "--seed_everything=0",
        "--pruner=none",
        f"--n_trials={n_trials}",
        "--n_workers=1",
        f"--storage={url}",
        "--study_name=pg",
        "--heartbeat_interval=1",
        "--grace_period=3",
        "--max_retry=2",
        f"--output_dir={tmp_path / 'out'}",
    ]


def test_two_machines_finish_exactly_n_trials_when_one_is_killed(postgres, data_cache, tmp_path):
    n_trials = 6
    url = postgres.create_database("two_machines")
    load_mnist1d(TINY_SAMPLES, cache_dir=data_cache)  # cached once, before two workers read it
    args = _tune_args(url, data_cache, tmp_path, n_trials)
    a = Worker(args, tmp_path, "a")
    b = None
    try:
        a.wait_for(lambda: any(line.startswith("study ") for line in a.lines), "study line")
        b = Worker(args, tmp_path, "b")  # the study is created and topped up: no launcher race
        a.wait_for(lambda: a.trial_lines(), "first finished trial of worker A")
        # Kill A mid-trial: once two trials run (each worker runs one at a time, so one is A's)
        # and both have a heartbeat (a trial without one is never detected as stale) and their
        # parameters (killed before it samples, a trial has none for its retry to repeat; on a
        # slow day CI caught A killed in that window, its retry sampling afresh).
        with postgres.connect("two_machines") as conn:
            a.wait_for(lambda: postgres.running_with_heartbeat(conn) == 2, "two running trials")
            os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(timeout=30)
        b.proc.wait(timeout=240)
        b._reader.join(timeout=30)
        assert b.proc.returncode == 0, b.log()
    finally:
        for worker in (a, b):
            if worker is not None:
                worker.stop()

    trials = optuna.load_study(study_name="pg", storage=url).get_trials(deepcopy=False)
    log = f"A:\n{a.log()}\nB:\n{b.log()}\n" + "\n".join(
        f"{t.number} {t.state.name}" for t in trials
    )
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)), log
    assert sum(t.state in FINISHED for t in trials) == n_trials, log
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]  # the trial A was running
    # Re-run once, by Optuna's heartbeat retry or, as both workers share this machine, by B
    # seeing A's process gone (claims.bring_back: retry_of), whichever comes first.
    retries = [t for t in trials if t is not failed and original_number(t) == failed.number]
    assert len(retries) == 1, log
    assert retries[0].state in FINISHED and retries[0].params == failed.params, log
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], log
    assert f"study 'pg': {n_trials}/{n_trials} finished" in "\n".join(b.lines), log


def test_unreachable_database_is_one_error_line(data_cache, tmp_path):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/nowhere"  # nothing listens
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_opt", "tune", *_tune_args(url, data_cache, tmp_path, 1)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lightning_opt: error: cannot open the study storage "), line


def test_launchers_racing_on_a_new_postgres_database_all_succeed(postgres):
    """Eight launchers create the tables, the schema stamp and the study at the same moment."""
    from lightning_opt.core.search_space import SearchParam
    from lightning_opt.tuning.claims import open_study
    from lightning_opt.tuning.storage import open_storage

    url = postgres.create_database("race")
    space = (SearchParam("lr", 1e-4, 1.0, log=True),)
    barrier = threading.Barrier(8)
    names: list[str] = []
    errors: list[str] = []

    def launch() -> None:
        barrier.wait(timeout=60)
        try:
            names.append(open_study(open_storage(url), "race", space, "val/loss").study_name)
        except Exception as err:  # reported by the test, with all the others
            errors.append(str(err))

    threads = [threading.Thread(target=launch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert names == ["race"] * 8
    assert optuna.get_all_study_names(url) == ["race"]


def test_ctrl_c_of_one_machine_is_rerun_by_another(postgres, data_cache, tmp_path):
    """Issue 31, case 10a on PostgreSQL: one process stopped with Ctrl-C mid-trial; the other
    re-runs the trial with its own values and seed (test_hardening's SQLite scenario)."""
    from test_hardening import interrupted_shared_tuning

    interrupted_shared_tuning(tmp_path, data_cache, postgres.create_database("interrupted"))


def test_launches_at_once_run_the_planned_trials_only(postgres, data_cache, tmp_path):
    """Issue 31, case 10b: three launches at the same moment each topped the study up (surplus
    WAITING trials, "4 of 4 planned"). Only the planned slots run, the surplus ends failed
    (``surplus``), nothing is left waiting, and the values are one process's."""
    from test_hardening import _tune_process, _values, reference_values

    from lightning_opt.tuning.claims import SURPLUS

    url = postgres.create_database("at_once")
    processes = [_tune_process(tmp_path / name, data_cache, url) for name in "abc"]
    for process in processes:
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0, out[-2000:]
    assert _values(url) == reference_values(tmp_path, data_cache)
    trials = optuna.load_study(study_name="adam", storage=url).get_trials(deepcopy=False)
    surplus = [t for t in trials if t.user_attrs.get("fail_reason") == SURPLUS]
    assert all(t.state == TrialState.FAIL and not t.params for t in surplus)
    assert len(trials) - len(surplus) == 4
