"""What one Optuna write costs in the SQLite study storage, with and without the write-ahead log.

    python perf/bench_storage.py [--members 10] [--epochs 25] [--repeats 3]
                                       [--out perf/results/storage.json]

A tuning population of ``--members`` trials reports its validation loss every epoch, each
report a committed write: ``--members x --epochs`` calls of ``trial.report`` into a fresh
database opened by ``lightning_opt.tuning.storage.open_storage``, timed per call (median over
``--repeats``), once with SQLite's defaults (rollback journal, ``synchronous=FULL``: every
commit waits for the disk) and once as ``open_storage`` opens a database on a local disk
(write-ahead log, ``synchronous=NORMAL``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from _report import machine_info, write_json


def per_report_ms(path: Path, members: int, epochs: int, write_ahead: bool) -> float:
    import optuna

    from lightning_opt.tuning import storage

    real = storage._on_network_filesystem
    storage._on_network_filesystem = lambda *_: not write_ahead  # defaults where no WAL
    try:
        storage = storage.open_storage(f"sqlite:///{path}")
    finally:
        storage._on_network_filesystem = real
    study = optuna.create_study(storage=storage, study_name="bench")
    trials = [study.ask() for _ in range(members)]
    start = time.perf_counter()
    for epoch in range(epochs):
        for trial in trials:
            trial.report(1.0 / (epoch + 1), epoch)
    elapsed = time.perf_counter() - start
    storage.engine.dispose()
    return elapsed / (members * epochs) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("perf/results/storage.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # Optuna's experimental-feature notes
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    times: dict[str, list[float]] = {"defaults": [], "write-ahead": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # interleaved, so drift hits both alike
            for name in times:
                path = Path(tmp) / f"{name}-{repeat}.db"
                times[name].append(
                    per_report_ms(path, args.members, args.epochs, name == "write-ahead")
                )
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{'sqlite':<12} {'ms / report':>12}")
    for name, value in medians.items():
        print(f"{name:<12} {value:>12.2f}")
    ratio = medians["defaults"] / medians["write-ahead"]
    print(f"write-ahead is {ratio:.1f}x faster per report")
    write_json(
        args.out,
        {"machine": machine_info(), "args": vars(args) | {"out": str(args.out)},
         "ms_per_report": times, "median": medians, "ratio": ratio},
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
