"""An arm's final runs: each seed trained on the tuned settings (one run at a time, or all seeds
as one population), tested once on the held-out split at the last and at the best-validation
epoch, and recorded as one ``result.json`` per seed (``final_record``) and on the seed's unit of
the study storage (``final_units``), from which every process sharing it reads the results.

The same record whichever way the seeds trained; a recorded seed is never trained again, an
unrecorded one's partial logs are replaced, and a Ctrl-C inside Lightning's fit exits with the
resume line.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch import seed_everything

from lightning_opt.clipping.callbacks import GradientClippingCallback
from lightning_opt.config.parsing import RunFailure
from lightning_opt.core import progress, signals
from lightning_opt.core.atomic import write_text
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.experiments.final_units import FinalUnits
from lightning_opt.runs.build import (
    RunSpec,
    run_loggers,
)
from lightning_opt.runs.runner import EpochHistory, Run, train_runs
from lightning_opt.training.loop import NonFiniteLossError
from lightning_opt.tuning import claims as studies


def _clip_report(clipper: Any, member: int = 0, position: int = 0) -> dict[str, Any]:
    """A clipping callback's per-epoch clip rate of population member ``member`` (0: a single
    model) and the quantiles of what it compared (at ``position`` of its live members)."""
    quantiles = clipper.compared_quantiles()
    return {
        "fraction_history": clipper.member_fraction_history(member),
        "quantity": None
        if quantiles is None
        else {"name": clipper.compared_quantity, "quantiles": quantiles[position]},
    }


def run_final(
    cfg: Any, arm: str, seed: int, log_dir: Path, data: MNIST1DDataModule
) -> dict[str, Any]:
    """One final run of an arm, logged in ``log_dir/seed_<seed>`` (resumable: a finished run's
    result.json is reused)."""
    out = log_dir / f"seed_{seed}"
    result_path = out / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    cfg = copy.deepcopy(cfg)
    cfg.seed_everything = seed
    seed_everything(seed, verbose=False)
    start = time.perf_counter()
    run = Run(cfg, {}, seed, _loggers_at(cfg, out))
    trained = train_runs([run], data, population=False, history=EpochHistory())
    if trained.error is not None:
        raise trained.error
    tested = trained.test(data)[0]  # the final weights, once
    checkpoint = trained.checkpoint(0, out)
    best = trained.test_best(data)[0]
    clippers = [c for c in trained.trainer.callbacks if isinstance(c, GradientClippingCallback)]
    internals = dict(trained.model.internals_history)
    clip = _clip_report(clippers[0]) if clippers else None
    if clip:
        internals["clip/fraction_clipped"] = clip["fraction_history"]
    outcome = trained.outcomes[0]
    result = final_record(
        cfg, seed, outcome.val_loss, outcome.val_acc, tested, best,
        clip_rate=clippers[0].clip_rate() if clippers else None, clip=clip,
        internals=internals, seconds=time.perf_counter() - start, log_dir=out,
        checkpoint=checkpoint,
    )  # fmt: skip
    _write_result(result, out)
    _print_result(arm, result)
    return result


def _loggers_at(cfg: Any, out: Path) -> list[Any]:
    """The run's configured loggers, writing to ``out`` (``save_dir/name/version``)."""
    return run_loggers(cfg, out.parent.parent, out.parent.name, out.name)


def final_record(
    cfg: Any,
    seed: int,
    val_loss: list[float],
    val_acc: list[float],
    last: dict[str, float],
    best: dict[str, float],
    *,
    clip_rate: float | None,
    clip: dict[str, Any] | None,
    internals: dict[str, list[float]],
    seconds: float,
    log_dir: Path,
    checkpoint: str,
    population: int | None = None,
) -> dict[str, Any]:
    """The one record of a final run (``result.json``), whether it trained alone or as a
    population member: its validation curves, test metrics at the last and at the lowest
    val/loss epoch, clipping activity, internals, and the net it trained."""
    record = {
        "seed": seed,
        "net": net_record(cfg),
        "final_val_loss": val_loss[-1],
        "best_val_loss": min(val_loss),
        "final_val_acc": val_acc[-1],
        "test_loss": float(last["test/loss"]),
        "test_acc": float(last["test/acc"]),
        "test_loss_best_epoch": float(best["test/loss"]),
        "test_acc_best_epoch": float(best["test/acc"]),
        "best_epoch": val_loss.index(min(val_loss)),
        "clip_rate": clip_rate,
        "clip_quantity": clip["quantity"] if clip else None,
        "val_loss_curve": val_loss,
        "val_acc_curve": val_acc,
        "internals": internals,
        "seconds": seconds,
        "log_dir": str(log_dir),
        "checkpoint": checkpoint,
    }
    if population is not None:
        record["population"] = population
    return record


def net_record(cfg: Any) -> dict[str, Any]:
    """The net a config trains: ``{class_path, init_args}`` with every argument spelled out."""
    return RunSpec.of(cfg).net


@contextlib.contextmanager
def _ctrl_c_resumable() -> Iterator[None]:
    """Ctrl-C or SIGTERM inside a Trainer's ``fit``/``test``: Lightning shuts down and exits with
    1 from its ``except KeyboardInterrupt`` (or with 0, ``SIGTERMException``); raise
    KeyboardInterrupt instead, so compare says how to resume and exits with 130 (143)."""
    try:
        yield
    except SystemExit as exit_:
        if not signals.stopped_by_signal(exit_):
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores it now
        raise KeyboardInterrupt from None


def _clear_unfinished(out: Path) -> None:
    """A final run that was killed or interrupted left logs but no result.json: it runs again
    from the start, so its partial logs go (TensorBoard would show both runs' curves)."""
    if out.exists() and not (out / "result.json").exists():
        shutil.rmtree(out)


def restore_result(result: dict[str, Any]) -> bool:
    """Write a reused run's ``result.json`` again where it is gone but its folder is there (its
    record in the study storage is the same text); whether it was written."""
    out = Path(result["log_dir"])
    if not out.is_dir() or (out / "result.json").exists():
        return False
    _write_result(result, out)
    return True


def _write_result(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "result.json"
    write_text(path, json.dumps(result, indent=1))  # never half a result


def _print_result(arm: str, result: dict[str, Any]) -> None:
    timing = f"{result['seconds']:.1f} s"
    if result.get("population"):
        timing = f"population of {result['population']}: {timing}"
    progress.say(
        f"final {arm} seed {result['seed']}: val/loss {result['final_val_loss']:.4f}  "
        f"test/loss {result['test_loss']:.4f}  test/acc {result['test_acc']:.4f}  "
        f"({timing})"
    )


@dataclass(frozen=True)
class FinalPart:
    """One label's final runs (an arm, or an arm re-tuned): its tuned config, the tuned values
    and its units. Parts whose configs differ only in those values train as one population."""

    label: str
    cfg: Any
    values: dict[str, Any]
    units: FinalUnits

    @property
    def log_dir(self) -> Path:
        """Where its runs log: ``seed_<s>/`` each."""
        return self.units.log_dir


def run_finals(
    parts: list[FinalPart], data: MNIST1DDataModule, population: bool, wait: bool = True
) -> dict[str, list[dict[str, Any]]] | None:
    """The final runs of ``parts``, one per seed of each: this process claims and trains the
    seeds no process has run (all of them at once as one population, or one at a time),
    records each on its unit, and returns every part's results, read from the storage. Seeds
    that another process is training are waited for, or with ``wait=False`` left for later
    (``None``).

    Resumable: a seed recorded by any process is never trained again; each member of a
    population logs to the directory its own run would (``seed_<s>`` of its part's
    ``log_dir``).
    """
    while True:
        for part in parts:
            part.units.plan()
        with _ctrl_c_resumable():
            while batch := _claim(parts, population):
                _run_claimed(parts, batch, data, population)
        done = {part.label: part.units.results() for part in parts}
        for part in parts:
            progress.seen((part.units.study.study_name, seed) for seed in done[part.label])
        if all(len(done[p.label]) == len(p.units.seeds) for p in parts):
            return {p.label: [done[p.label][s] for s in p.units.seeds] for p in parts}
        elsewhere = {p.label: p.units.running_elsewhere() for p in parts}
        elsewhere = {label: seeds for label, seeds in elsewhere.items() if seeds}
        if not wait and elsewhere:
            return None
        if elsewhere and not parts[0].units.waits_safely:
            shown = "; ".join(f"{label} seeds {seeds}" for label, seeds in elsewhere.items())
            raise RunFailure(
                f"the final runs of {shown} are running in another process and this storage "
                "has no heartbeat to tell whether it is alive; run the same command again when "
                "it has finished"
            )
        if elsewhere:
            time.sleep(min(0.5, parts[0].units.options.heartbeat_interval))


#: A claimed final run: its part, its trial, the trial's id and the seed.
Claimed = tuple[FinalPart, Any, int, int]


def _claim(parts: list[FinalPart], population: bool) -> list[Claimed]:
    """Every claimable seed of every part (a population), or the first one."""
    batch: list[Claimed] = []
    for part in parts:
        limit = len(part.units.seeds) if population else 1 - len(batch)
        batch += [(part, *claimed) for claimed in part.units.claim(limit)]
    return batch


def _run_claimed(
    parts: list[FinalPart], batch: list[Claimed], data: MNIST1DDataModule, population: bool
) -> None:
    """Train the claimed seeds and record each on its unit; a failure or an interruption
    fails the units, to be re-run at the next launch."""
    todo = []
    for part, trial, _, seed in batch:  # finished here but not recorded: its result.json
        path = part.log_dir / f"seed_{seed}" / "result.json"
        if path.exists():
            part.units.record(trial, json.loads(path.read_text()))
        else:
            _clear_unfinished(path.parent)
            todo.append((part, trial, seed))
    failures: dict[tuple[str, int], str] = {}
    with contextlib.ExitStack() as beats:  # the parts' units may live in other storages
        for part in {id(p): p for p, *_ in batch}.values():
            ids = [trial_id for p, _, trial_id, _ in batch if p is part]
            interval = part.units.options.heartbeat_interval
            beats.enter_context(studies.heartbeats(part.units.storage, ids, interval))
        try:
            results = _train(todo, data, population, failures)
        except (KeyboardInterrupt, SystemExit):
            for part, trial, _ in todo:
                part.units.fail([trial], "interrupted")
            raise
        except BaseException as err:
            for part, trial, _ in todo:
                part.units.fail([trial], f"{type(err).__name__}: {err}")
            raise
    for (part, trial, _), result in zip([t for t in todo if (t[0].label, t[2]) not in failures],
                                        results, strict=True):  # fmt: skip
        part.units.record(trial, result)
    for part, trial, seed in todo:
        if (part.label, seed) in failures:
            part.units.fail([trial], "non-finite loss")
    if failures:
        shown = "; ".join(f"{label} seed {s}: {r}" for (label, s), r in failures.items())
        raise NonFiniteLossError(f"final runs failed ({shown}); the other seeds' results are kept")


def _train(
    todo: list[tuple[FinalPart, Any, int]], data: MNIST1DDataModule, population: bool,
    failures: dict[tuple[str, int], str],
) -> list[dict[str, Any]]:  # fmt: skip
    """The results of ``todo`` in its order (those in ``failures`` left out)."""
    if not todo:
        return []
    if not population:
        return [run_final(part.cfg, part.label, seed, part.log_dir, data) for part, _, seed in todo]
    labels = {part.label for part, _, _ in todo}
    part = todo[0][0]
    seeds = [seed for _, _, seed in todo]
    if len(labels) == 1:  # one part: its tuned config, exactly as it always trained
        failed: dict[int, str] = {}
        results = run_final_population(part.cfg, part.label, seeds, part.log_dir, data, failed)
        failures.update({(part.label, s): r for s, r in failed.items()})
        return results
    # Members of one optimizer side by side: each run of them is one group of the population.
    ordered = sorted(todo, key=lambda t: _optimizer_key(t[0].cfg))
    seeds = [seed for _, _, seed in ordered]
    members = [(p.label, p.log_dir, p.cfg, p.values) for p, _, _ in ordered]
    results = run_final_population(
        part.cfg, part.label, seeds, part.log_dir, data, failures, members
    )
    trained = [(p.label, s) for p, _, s in ordered if (p.label, s) not in failures]
    found = dict(zip(trained, results, strict=True))
    return [found[(p.label, s)] for p, _, s in todo if (p.label, s) not in failures]


def _optimizer_key(cfg: Any) -> str:
    spec = RunSpec.of(cfg)
    return json.dumps([spec.optimizer, spec.lr_scheduler], sort_keys=True, default=str)


def run_final_population(
    cfg: Any, arm: str, seeds: list[int], log_dir: Path, data: MNIST1DDataModule,
    failures: dict[Any, str] | None = None,
    members: list[tuple[str, Path, Any, dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Final runs of ``seeds`` trained as one population, each logged in
    ``log_dir/seed_<seed>``; the result of each seed that finished. A member that failed (a
    non-finite loss) raises ``NonFiniteLossError`` after the others' results are written, or
    with ``failures`` is put there (seed: why; with ``members``, (label, seed): why).

    ``members``: each member's label, log folder, tuned config and tuned values, for parts of
    several labels trained together (configs that may differ in their optimizer and LR
    scheduler; ``cfg`` is then any of theirs, for the trainer)."""
    labels = [label for label, *_ in members] if members else [arm] * len(seeds)
    dirs = [d for _, d, *_ in members] if members else [log_dir] * len(seeds)
    outs = [d / f"seed_{seed}" for d, seed in zip(dirs, seeds, strict=True)]
    tuned = [(c, values) for _, _, c, values in members] if members else [(cfg, {})] * len(seeds)
    runs = [
        Run(c, values, seed, _loggers_at(cfg, out))
        for (c, values), seed, out in zip(tuned, seeds, outs, strict=True)
    ]
    start = time.perf_counter()
    trained = train_runs(runs, data, population=True, trainer_cfg=cfg, track_best=True)
    model = trained.model
    last = trained.test(data)  # the final weights, once
    checkpoints = {member: trained.checkpoint(member, outs[member]) for member in last}
    best = trained.test_best(data)  # each member's lowest val/loss epoch, without loggers
    seconds = time.perf_counter() - start
    rules = {member: model.rule_of(member) for member in model.member_ids}
    results, failed = [], {}
    for member, seed in enumerate(seeds):
        if member in model.dropped:
            failed[(labels[member], seed) if members else seed] = str(model.dropped[member])
            continue
        history = model.history[member]
        internals = {n: v for n, v in history.items() if n.startswith("optim/")}
        rule, position = rules[member]  # its own clipping rule, and its place in the stats
        clip = _clip_report(rule, member, position) if rule is not None else None
        if clip:
            internals["clip/fraction_clipped"] = clip["fraction_history"]
        rate = rule.clip_rates()[position] if rule is not None else None
        result = final_record(
            cfg, seed, history["val/loss"], history["val/acc"], last[member], best[member],
            clip_rate=rate, clip=clip, internals=internals, seconds=seconds,
            log_dir=outs[member],
            checkpoint=checkpoints[member], population=len(seeds),
        )  # fmt: skip
        _write_result(result, Path(result["log_dir"]))
        _print_result(labels[member], result)
        results.append(result)
    if failures is not None:
        failures.update(failed)
    elif failed:
        raise NonFiniteLossError(
            f"arm {arm!r} final runs failed "
            f"({'; '.join(f'seed {s}: {r}' for s, r in failed.items())}); the other seeds' "
            "results are kept"
        )
    return results
