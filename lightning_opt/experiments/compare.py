"""``compare``: a seed note's experiment as one command, made sound.

For each arm: tune on the validation split (the ``tune`` machinery, same budget and sampler seed
for every arm), retrain the best hyperparameters over several seeds (each seed changes
initialisation and data order, never the split), evaluate the untouched test set once per run,
then report means with confidence intervals and the differences between arms.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser

from lightning_opt.config.fingerprints import EXPERIMENT_KEYS, run_fingerprint
from lightning_opt.config.parsing import (
    RunFailure,
    UsageError,
    check_placeholders,
    optimizer_dict,
    run_name,
)
from lightning_opt.core import progress, signals
from lightning_opt.data import MNIST1DDataModule
from lightning_opt.experiments.final_units import FinalUnits
from lightning_opt.experiments.finals import FinalPart, net_record, restore_result, run_finals
from lightning_opt.experiments.grouping import final_groups, tuning_groups
from lightning_opt.experiments.plans import (
    ArmPlan,
    check_experiment_record,
    experiment_settings,
    plan_arms,
)
from lightning_opt.reports import page as report_page
from lightning_opt.reports import summary as report
from lightning_opt.reports import text as report_text
from lightning_opt.runs.build import (
    check_writable,
    chunk_where_invisible,
    clipping_callbacks,
    quiet_lightning,
    scheduler_dict,
    with_values,
)
from lightning_opt.tuning.claims import FINISHED, original_number
from lightning_opt.tuning.outputs import fit_config, write_config
from lightning_opt.tuning.trials import (
    ignored_values,
    resolve_search_space,
    search_space_notes,
    unfinished_trials,
)
from lightning_opt.tuning.tune import TuneCLI, parse, run_studies_together, run_study


class CompareCLI(TuneCLI):
    """``tune``'s options plus the experiment's: arms, seeds, tuning epochs."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.set_defaults(output_dir="lightning_logs/compare")  # <output_dir>/<experiment>/
        group = parser.add_argument_group("Experiment")
        group.add_argument("--experiment", type=str, default="experiment",
                           help="Name; outputs go to <output_dir>/<experiment>/.")  # fmt: skip
        group.add_argument(
            "--arms", type=list[dict[str, Any]], default=[],
            help="Each arm: {name, optimizer (a short name, a class path or {class_path, "
            "init_args}), lr_scheduler (the same; null: none), model: {...}, callbacks: [...], "
            "search_space: [...]}.",
        )  # fmt: skip
        group.add_argument("--seeds", type=int, default=5,
                           help="Final runs per arm, seeded seed_everything, +1, ...")  # fmt: skip
        group.add_argument("--tune_max_epochs", type=int, default=25,
                           help="Epochs per tuning trial (trainer.max_epochs: final runs).")  # fmt: skip
        group.add_argument(
            "--robustness", type=bool, default=True,
            help="When tune_max_epochs differs from trainer.max_epochs, also re-tune each arm at "
            "the finals' budget and re-run its finals (a robustness check of the verdict).",
        )  # fmt: skip
        group.add_argument(
            "--population_finals", type=bool, default=True,
            help="Train an arm's final seeds at once as one population (the same numbers as "
            "separate runs, to float rounding); false: one run per seed.",
        )  # fmt: skip
        group.add_argument(
            "--share_arms", type=bool, default=False,
            help="Name each arm's studies by its settings (<arm>.<digest>) instead of "
            "<experiment>.<arm>: experiments on one storage whose arm is identical (net, data, "
            "budgets, optimizer, search space, trials, seeds' settings) share its tuning trials "
            "and final runs, each trained once.",
        )  # fmt: skip
        group.add_argument(
            "--shared_arms_dir", type=str | None, default=None,
            help="With --share_arms and a --storage: where the shared arms' logs and "
            "checkpoints go, a folder <arm>.<digest> per study (default "
            "<output_dir>/shared_arms; one per storage); --overwrite never deletes them (other "
            "experiments' results point at them).",
        )  # fmt: skip


def run_compare(args: list[str]) -> Path:
    """``python -m lightning_opt compare --config EXPERIMENT.yaml``; the experiment directory."""
    quiet_lightning()
    return run_experiment(plan_experiment(args))


@dataclass(frozen=True)
class Experiment:
    """An experiment parsed and planned (every arm checked): what ``run_experiment`` runs."""

    parser: LightningArgumentParser
    config: Any
    plans: list[ArmPlan]


def plan_experiment(args: list[str]) -> Experiment:
    """Parse ``compare``'s arguments and plan every arm (``UsageError``, one line)."""
    cli = parse(args, CompareCLI)
    try:
        plans = plan_arms(cli.config, cli.parser)
        for plan in plans:
            for note in search_space_notes(plan.tune_cfg):
                print(f"arm {plan.name}: {note}", flush=True)
            # An arm of the command line's optimizer searches its placeholders.
            if optimizer_dict(plan.tune_cfg) == optimizer_dict(cli.config):
                searched = [p.name for p in resolve_search_space(plan.tune_cfg)]
                check_placeholders(cli.placeholders, searched, f"arm {plan.name!r}: ")
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    return Experiment(cli.parser, cli.config, plans)


def run_experiment(experiment: Experiment) -> Path:
    """Run a planned experiment: tune, final runs, report; the experiment directory."""
    parser, config, plans = experiment.parser, experiment.config, experiment.plans
    exp_dir = Path(config.output_dir) / config.experiment
    try:
        check_writable(exp_dir)
    except ValueError as err:
        raise UsageError(str(err)) from None
    check_experiment_record(
        exp_dir, run_fingerprint(parser, config), config.overwrite, plans, config.share_arms
    )
    data = MNIST1DDataModule(**config.data.as_dict())
    data.prepare_data()

    labelled = [(p.name, p.name, p) for p in plans]
    labelled += [(p.name, f"{p.name}/retuned", p.retune) for p in plans if p.retune is not None]
    plans_by_label = {label: plan for _, label, plan in labelled}
    with progress.command(units_planned(experiment)):
        tuned = {}
        for group in tuning_groups(parser, labelled):
            together = {}
            if len(group) > 1:
                epochs = sorted(
                    {plans_by_label[label].tune_cfg.trainer.max_epochs for label in group}
                )
                shown = " or ".join(map(str, epochs))
                progress.say(
                    f"== arms {', '.join(group)}: tuning together ({shown} epochs a trial)"
                )
                entries = [(label, plans_by_label[label].tune_cfg, plans_by_label[label].options)
                           for label in group]  # fmt: skip
                together = run_studies_together(entries, data)
            for label in group:
                plan = plans_by_label[label]
                tuned[label] = tune_arm(parser, config, plan, label, data, together.get(label))
        try:
            # Final runs that other processes sharing the storage are training are waited for only
            # after this process's own: meanwhile it trains the next group's.
            runs, pending = {}, []
            for group in final_groups(parser, labelled):
                done = run_finals(
                    [tuned[label].part for label in group], data,
                    tuned[group[0]].plan.population_finals, wait=False,
                )  # fmt: skip
                if done is None:
                    progress.say(f"== final runs of {', '.join(group)} in another process; "
                                 "coming back to them")  # fmt: skip
                    pending.append(group)
                runs.update(done or {})
            for group in pending:
                parts = [tuned[label].part for label in group]
                runs.update(run_finals(parts, data, tuned[group[0]].plan.population_finals))
        except KeyboardInterrupt:  # in the finals (tuning says so itself and exits)
            print(
                "interrupted: finished tuning trials and final runs are kept; run the same command "
                "again to resume",
                file=sys.stderr,
            )
            sys.exit(signals.interrupt_exit_code())
    summary: dict[str, Any] = {}
    for name, label, _ in labelled:
        arm = summarize_arm(parser, config, tuned[label], runs[label])
        if label == name:
            summary[name] = arm
        else:  # the robustness check: tuned at the finals' budget
            summary[name]["retuned"] = arm
    results = report.summarize(config.experiment, summary, experiment_settings(config))
    report_page.write_all(exp_dir, results)
    print(report_text.markdown_table(results))
    for line in results["verdicts"]:
        print(line)
    for line in results.get("warnings", []):
        print(f"warning: {line}")
    print(
        f"report: {exp_dir / 'results.md'}, {exp_dir / 'comparison.html'}, {exp_dir / 'comparison.png'}"
    )
    return exp_dir


def units_planned(experiment: Experiment) -> int:
    """The tuning trials and final runs ``experiment`` ends with (its progress's units)."""
    plans = [p for plan in experiment.plans for p in (plan, plan.retune) if p is not None]
    return sum(p.options.n_trials + experiment.config.seeds for p in plans)


@dataclass(frozen=True)
class TunedArm:
    """An arm (or an arm re-tuned) after its tuning: the study, its best trial, and its final
    runs to train (``part``)."""

    label: str
    plan: ArmPlan
    study: Any
    completed: list[Any]
    best: Any
    part: FinalPart


def tune_arm(
    parser: LightningArgumentParser, config: Any, plan: ArmPlan, label: str,
    data: MNIST1DDataModule, study: Any = None,
) -> TunedArm:  # fmt: skip
    """Tune one arm (``label``: where its finals go under the experiment, ``<arm>`` or
    ``<arm>/retuned``), unless ``study`` is its study already tuned, and open the units of its
    final runs."""
    if study is None:
        epochs = plan.tune_cfg.trainer.max_epochs
        progress.say(f"== arm {label}: tuning ({plan.options.n_trials} trials x {epochs} epochs)")
        study = run_study(plan.tune_cfg, plan.options)
    unfinished = unfinished_trials(study, plan.options.n_trials)
    if unfinished:  # never a best trial of a partial study
        raise RunFailure(
            f"arm {label!r}: trials {unfinished} of study {plan.options.study_name!r} did not "
            "finish (interrupted or killed in another process that shares the storage, or still "
            "running there); run the same command again to re-run them before the final runs"
        )
    completed = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
    if not completed:
        raise RunFailure(
            f"arm {label!r}: no tuning trial completed (each was pruned or diverged: see its "
            "trial lines); search lower or narrower values, and run the same command again"
        )
    ignored = ignored_values(completed)
    if ignored is not None:
        print(f"warning: arm {label}: {ignored}", flush=True)
    best = study.best_trial
    progress.say(f"== arm {label}: {config.seeds} final runs x {config.trainer.max_epochs} "
                 f"epochs with {best.params}")  # fmt: skip
    tuned_cfg = with_values(plan.final_cfg, best.params)
    seeds = [config.seed_everything + s for s in range(config.seeds)]
    chunk_where_invisible(tuned_cfg, data)  # the arm's own callbacks decide
    fingerprint = run_fingerprint(parser, tuned_cfg, drop=EXPERIMENT_KEYS)  # a seed's numbers
    try:
        units = FinalUnits.open(plan.options, seeds, fingerprint)
    except ValueError as err:  # a finals study of other settings
        raise UsageError(str(err)) from None
    return TunedArm(
        label, plan, study, completed, best, FinalPart(label, tuned_cfg, best.params, units)
    )


def summarize_arm(
    parser: LightningArgumentParser, config: Any, arm: TunedArm, runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """An arm's tuning and final runs as results.json records them; each final run's fit
    config written next to its checkpoint (where it ran)."""
    tuned_cfg, label, study, completed = arm.part.cfg, arm.label, arm.study, arm.completed
    dumped = fit_config(parser, tuned_cfg)  # once: the seeds' configs differ in their seed alone
    whose = f"of experiment {config.experiment!r}"
    if config.share_arms:  # the same run for every experiment that shares it
        whose = f"(study {arm.plan.options.study_name!r}, shared by arm settings)"
    missing = [run["seed"] for run in runs if not Path(run["checkpoint"]).is_file()]
    if missing:  # reused from the study storage, never silently: the report links to them
        print(
            f"warning: arm {label}: the checkpoints of seeds {missing} are gone since they were "
            "recorded; their numbers come from the study storage and the report links to "
            "missing files (--overwrite trains them again)",
            flush=True,
        )
    restored = [run["seed"] for run in runs if restore_result(run)]
    if restored:  # nothing computed is lost: the storage holds every run's record
        print(f"arm {label}: the result.json of seeds {restored} was gone; written again from "
              "the study storage", flush=True)  # fmt: skip
    for run in runs:
        if not Path(run["log_dir"]).is_dir():
            continue
        header = (
            f"# Final run of arm {label!r} {whose}, seed "
            f"{run['seed']}.\n# Its weights: python -m lightning_opt test --config "
            f"{run['log_dir']}/config.yaml --ckpt_path {run['checkpoint']}\n"
        )
        seed_cfg = {**dumped, "seed_everything": run["seed"]}
        write_config(seed_cfg, Path(run["log_dir"]) / "config.yaml", header)
    # In the order, and under the numbers, of an uninterrupted study: a re-run stands for the
    # trial it replaces.
    values = [t.value for t in sorted(completed, key=original_number)]
    return {
        "optimizer": run_name(tuned_cfg),
        "optimizer_class": optimizer_dict(tuned_cfg)["class_path"],
        "net": net_record(tuned_cfg),
        "lr_scheduler": (scheduler_dict(tuned_cfg) or {}).get("class_path"),
        "clipping": [
            c.class_path.rsplit(".", 1)[-1]
            for c in tuned_cfg.trainer.callbacks
            if c in clipping_callbacks(tuned_cfg)
        ],
        "tuned": arm.best.params,
        "tune_max_epochs": arm.plan.tune_cfg.trainer.max_epochs,
        "tuning": {
            "study": arm.plan.options.study_name,
            "best_trial": original_number(arm.best),
            "best_val_loss": arm.best.value,
            "complete": len(completed),
            "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
            "values": values,
            "search_space": [p.as_dict() for p in resolve_search_space(arm.plan.tune_cfg)],
            "sampler": arm.plan.options.sampler,
            "study_size": arm.plan.options.trials_per_study,
            "trials": trial_records(study, arm.plan.options),
        },
        "runs": runs,
    }


def trial_records(study: Any, options: Any) -> list[dict[str, Any]]:
    """Every finished tuning trial of the study's first ``n_trials`` (a re-run stands for the
    trial it replaces), in order: its values, seed, state and validation-loss curve (one value
    per report, after each epoch), and the study of ``study_size`` trials it belongs to
    (AlgoPerf's external tuning scores each such study by its fastest trial)."""
    finished = {}
    for trial in study.get_trials(deepcopy=False):
        if trial.state in FINISHED:
            finished[original_number(trial)] = trial
    records = []
    for number in sorted(n for n in finished if n < options.n_trials):
        trial = finished[number]
        records.append({
            "number": number, "study": number // options.trials_per_study,
            "params": trial.params, "seed": trial.user_attrs.get("seed"),
            "state": trial.state.name.lower(), "value": trial.value,
            "val_loss_curve": [trial.intermediate_values[k]
                               for k in sorted(trial.intermediate_values)],
        })  # fmt: skip
    return records
