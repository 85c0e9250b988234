"""Time ``tune``: trials per minute with 1 vs 2 workers, and the fixed cost of one trial.

    python perf/bench_tune.py [--trials 12] [--epochs 5] [--repeats 1]
                                    [--overhead-trials 12] [--out perf/results/tune.json]

1. Throughput. The same study (``--optimizer adam --pruner none``, the default 5,000 samples,
   ``--trainer.max_epochs EPOCHS --n_trials TRIALS``) runs as ``python -m lightning_opt tune`` in a
   subprocess with ``--n_workers 1`` and ``--n_workers 2``, each time with a fresh output dir and
   sqlite storage; the data cache is warmed once first, so generation is not timed. Reported: the
   wall time of the whole command (start-up, plots and all), the "trial phase" (from the launcher's
   ``study ...`` line to the last trial line, so worker start-up is included but the launcher's own
   start-up and final outputs are not), trials per minute of each, the "tail" from the last
   trial line to the exit, and the ratios 1-worker / 2-workers (the project's target is >= 1.7x).

2. Per-trial overhead, in this process: a small study runs through ``cli_main(["tune", ...])``
   with max_epochs 1 and 3 (twice each, interleaved). Each trial is timed from the start
   of its claim to the start of the next claim (so suggest, Trainer construction, sanity check,
   training, ``study.tell`` and the heartbeat are all in), and split into pieces with hooks on the
   claim, ``TrialRunner.run``, the Trainer's construction and ``on_train_start``/``on_train_end``.
   The fixed cost per trial is estimated two ways: extrapolated, t(1 epoch) - (t(3) - t(1)) / 2,
   and directly, trial time minus the fit loop (``on_train_start`` to ``on_train_end``) in the
   1-epoch study; from medians and from minima (another process on the 2 cores only ever adds
   time, so the minima are the robust figures on a busy machine). Trial 0 of each study is left
   out and reported on its own; the very first trial of this process is the warm-up (first
   Trainer, first fit). The target is < 150 ms per trial. (The trial lines' own "(X.X s)" only cover ``trainer.fit`` at 0.1 s
   resolution; their mean is kept in the JSON as a cross-check.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _report import machine_info, write_json
from lightning.pytorch import Callback

import lightning_opt.tuning.claims as studies
from lightning_opt.cli.main import cli_main
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.runs import build as runs
from lightning_opt.tuning import trials

TRIAL_LINE = re.compile(r"^trial\s+(\d+)\s.*\((\d+(?:\.\d+)?) s\)\s*$")


def _study_args(tmp: Path, cache: str, trials: int, epochs: int) -> list[str]:
    return [
        "--optimizer=adam", "--pruner=none", f"--n_trials={trials}",
        f"--trainer.max_epochs={epochs}", f"--data.cache_dir={cache}",
        f"--output_dir={tmp / 'out'}", f"--storage=sqlite:///{tmp / 'optuna.db'}",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 1. Throughput: the CLI in a subprocess


def run_subprocess_study(cache: str, trials: int, epochs: int, workers: int) -> dict:
    """Wall time of ``python -m lightning_opt tune`` and the times its lines appeared."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "lightning_opt", "tune",
            *_study_args(Path(tmp), cache, trials, epochs), f"--n_workers={workers}",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        study_line, trial_lines, output = None, [], []
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, ""):
            now = time.perf_counter() - start
            output.append(line)
            if line.startswith("study ") and " to run with " in line:
                study_line = now
            elif TRIAL_LINE.match(line):
                trial_lines.append(now)
        code = proc.wait()
        wall = time.perf_counter() - start
    if code != 0 or len(trial_lines) != trials or study_line is None:
        sys.exit(f"tune failed (exit {code}): {' '.join(cmd)}\n{''.join(output[-30:])}")
    phase = trial_lines[-1] - study_line
    return {
        "workers": workers,
        "wall_s": wall,
        "study_line_s": study_line,
        "first_trial_line_s": trial_lines[0],
        "last_trial_line_s": trial_lines[-1],
        "trial_phase_s": phase,
        "tail_s": wall - trial_lines[-1],  # best.yaml, plots, and waiting for the workers
        "trials_per_min_wall": 60 * trials / wall,
        "trials_per_min_phase": 60 * trials / phase,
    }


# ---------------------------------------------------------------------------------------------
# 2. Per-trial overhead: the same code path in this process, with timestamps


class _Clock(Callback):
    """Timestamps of one trial's fit loop."""

    def __init__(self, record: dict) -> None:
        self.record = record

    def on_train_start(self, trainer, pl_module):
        self.record["train_start"] = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.record["train_end"] = time.perf_counter()


@contextlib.contextmanager
def _instrumented(events: list[dict]):
    """Record per trial: claim, run start, Trainer built, fit loop start/end, run end."""
    claim, run, trainer_cls = studies.claim_waiting_trial, trials.TrialRunner.run, runs.Trainer
    suggest = trials.TrialRunner.suggest

    def timed_claim(*args, **kwargs):
        now = time.perf_counter()
        if events and "next_claim" not in events[-1]:
            events[-1]["next_claim"] = now
        events.append({"claim": now})
        return claim(*args, **kwargs)

    def timed_suggest(self, trial):
        events[-1]["run_start"] = time.perf_counter()  # sampling starts the trial's own work
        return suggest(self, trial)

    def timed_run(self, trial, params):
        try:
            return run(self, trial, params)
        finally:
            events[-1]["run_end"] = time.perf_counter()

    def timed_trainer(**kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), _Clock(events[-1])]
        trainer = trainer_cls(**kwargs)
        events[-1]["trainer_built"] = time.perf_counter()
        return trainer

    studies.claim_waiting_trial, trials.TrialRunner.run, runs.Trainer = (
        timed_claim, timed_run, timed_trainer,
    )  # fmt: skip
    trials.TrialRunner.suggest = timed_suggest
    try:
        yield
    finally:
        studies.claim_waiting_trial, trials.TrialRunner.run, runs.Trainer = claim, run, trainer_cls
        trials.TrialRunner.suggest = suggest


PIECES = {  # name -> (from, to)
    "claim": ("claim", "run_start"),
    "suggest+build": ("run_start", "trainer_built"),
    "fit setup+sanity": ("trainer_built", "train_start"),
    "fit loop": ("train_start", "train_end"),
    "fit teardown": ("train_end", "run_end"),
    "tell+heartbeat": ("run_end", "next_claim"),
}


def run_inprocess_study(cache: str, trials: int, epochs: int) -> dict:
    """One study via ``cli_main``: per-trial total times and pieces (seconds)."""
    events: list[dict] = []
    out = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        args = ["tune", *_study_args(Path(tmp), cache, trials, epochs)]
        with _instrumented(events), contextlib.redirect_stdout(out):
            cli_main(args)
    events = [e for e in events if "run_end" in e]  # the last claim found nothing
    printed = [float(m.group(2)) for m in map(TRIAL_LINE.match, out.getvalue().splitlines()) if m]
    if len(events) != trials or len(printed) != trials:
        sys.exit(f"in-process tune ran {len(events)} of {trials} trials:\n{out.getvalue()}")
    return {
        "epochs": epochs,
        "total_s": [e["next_claim"] - e["claim"] for e in events],
        "pieces_s": {k: [e[b] - e[a] for e in events] for k, (a, b) in PIECES.items()},
        "printed_s": printed,
    }


def overhead(cache: str, trials: int, repeats: int) -> dict:
    runs: dict[int, list[dict]] = {1: [], 3: []}
    for _ in range(repeats):  # interleaved, so drift hits both alike
        for epochs in runs:
            runs[epochs].append(run_inprocess_study(cache, trials, epochs))
    first = runs[1][0]  # the first study of this process: its trial 0 is the warm-up

    def pooled(epochs: int, key: str = "total_s", piece: str | None = None) -> list[float]:
        out = []
        for r in runs[epochs]:
            values = r[key] if piece is None else r[key][piece]
            out.extend(values[1:])
        return out

    fixed = [t - f for t, f in zip(pooled(1), pooled(1, "pieces_s", "fit loop"), strict=True)]

    def estimates(stat) -> dict:  # a noisy neighbour only ever adds time: min is the robust one
        t1, t3 = stat(pooled(1)), stat(pooled(3))
        return {
            "trial_1_epoch_s": t1,
            "trial_3_epochs_s": t3,
            "per_epoch_s": (t3 - t1) / 2,
            "overhead_extrapolated_s": t1 - (t3 - t1) / 2,
            "overhead_direct_s": stat(fixed),
            "pieces_1_epoch_s": {k: stat(pooled(1, "pieces_s", k)) for k in PIECES},
        }

    return {
        "median": estimates(statistics.median),
        "min": estimates(min),
        "first_trial_of_process_s": first["total_s"][0],
        "first_trial_of_process_pieces_s": {k: v[0] for k, v in first["pieces_s"].items()},
        "first_trial_of_later_studies_s": [
            r["total_s"][0] for e in runs for r in runs[e] if r is not first
        ],
        "printed_mean_s": {
            e: statistics.mean(pooled(e, "printed_s")) for e in runs
        },  # the trial lines' "(X.X s)": fit only, 0.1 s resolution
        "runs": {str(e): rs for e, rs in runs.items()},
    }


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="of each throughput run")
    parser.add_argument("--overhead-trials", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("perf/results/tune.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as cache:
        MNIST1DDataModule(cache_dir=cache).prepare_data()  # generate once, outside the timings

        ms = lambda s: 1e3 * s  # noqa: E731
        over = overhead(cache, args.overhead_trials, 2)
        print(f"per-trial overhead ({args.overhead_trials} trials x 2 studies per epoch count, "
              "in process; trial 0 left out)")  # fmt: skip
        print(f"  {'':<26} {'median ms':>9} {'min ms':>8}")
        rows = {
            "trial, 1 epoch": "trial_1_epoch_s", "trial, 3 epochs": "trial_3_epochs_s",
            "per epoch": "per_epoch_s",
            "overhead, extrapolated": "overhead_extrapolated_s",
            "overhead, direct": "overhead_direct_s",
        }  # fmt: skip
        for label, key in rows.items():
            print(f"  {label:<26} {ms(over['median'][key]):9.1f} {ms(over['min'][key]):8.1f}")
        print("  target: overhead < 150 ms; direct = 1-epoch trial minus its fit loop")
        print(f"  pieces of a 1-epoch trial  {'median ms':>9} {'min ms':>8} {'trial 0 ms':>10}")
        for name in PIECES:
            first = over["first_trial_of_process_pieces_s"][name]
            print(
                f"    {name:<24} {ms(over['median']['pieces_1_epoch_s'][name]):9.1f} "
                f"{ms(over['min']['pieces_1_epoch_s'][name]):8.1f} {ms(first):10.1f}"
            )
        print(f"  first trial of the process {ms(over['first_trial_of_process_s']):9.1f} ms")
        later = over["first_trial_of_later_studies_s"]
        print(f"  trial 0 of later studies   {ms(statistics.median(later)):8.1f} ms (median)")

        runs: dict[int, list[dict]] = {1: [], 2: []}
        for _ in range(args.repeats):
            for workers in runs:
                runs[workers].append(run_subprocess_study(cache, args.trials, args.epochs, workers))
    med = {
        w: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "workers"}
        for w, rs in runs.items()
    }
    speedup_wall = med[1]["wall_s"] / med[2]["wall_s"]
    speedup_phase = med[1]["trial_phase_s"] / med[2]["trial_phase_s"]
    print(f"\nthroughput: {args.trials} trials x {args.epochs} epochs, adam, pruner none "
          f"(median of {args.repeats})")  # fmt: skip
    print(f"{'workers':>7} {'wall s':>7} {'trials/min':>10} {'phase s':>8} {'trials/min':>10} "
          f"{'1st trial at s':>14} {'tail s':>6}")  # fmt: skip
    for w, m in med.items():
        print(
            f"{w:>7} {m['wall_s']:7.2f} {m['trials_per_min_wall']:10.1f} "
            f"{m['trial_phase_s']:8.2f} {m['trials_per_min_phase']:10.1f} "
            f"{m['first_trial_line_s']:14.2f} {m['tail_s']:6.2f}"
        )
    print(f"speed-up 1/2 workers: wall {speedup_wall:.2f}x, trial phase {speedup_phase:.2f}x "
          "(target >= 1.7x)")  # fmt: skip
    machine = machine_info(torch_threads=torch.get_num_threads(), loadavg_before=load_before)
    result = {
        "machine": machine,
        "trials": args.trials,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "throughput": {
            "median": {str(w): m for w, m in med.items()},
            "speedup_wall": speedup_wall,
            "speedup_trial_phase": speedup_phase,
            "runs": {str(w): rs for w, rs in runs.items()},
        },
        "overhead": over,
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
