"""A population's checkpoint (its members, their history) and each member's own single-model
checkpoint, which ``test``/``predict --ckpt_path`` load as the run of that member's seed."""

from __future__ import annotations

from typing import Any

from typing_extensions import override


class MemberCheckpoints:
    """Save, check and resume a population; a member's single-model checkpoint. A mixin of
    ``PopulationClassifier``."""

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._checkpoint_in_eval_mode(checkpoint)
        checkpoint["population"] = {
            "seeds": self.all_seeds,
            "member_hparams": self.member_hparams,
            "member_ids": self.member_ids,
            "dropped": self.dropped,
            "history": self.history,
        }
        if len(self.groups) > 1:
            checkpoint["population"]["member_groups"] = [g.entry() for g in self.groups]
        self._optimizer_states_as_data(checkpoint)

    def check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of a single model or of another population (``ValueError``)."""
        saved = checkpoint.get("population")
        if saved is None:
            raise ValueError("not a population checkpoint (it has no 'population' entry)")
        if saved["seeds"] != self.all_seeds or saved["member_hparams"] != self.member_hparams:
            raise ValueError(
                f"the checkpoint is of a population with seeds {saved['seeds']} and "
                f"member_hparams {saved['member_hparams']}; this one has {self.all_seeds} and "
                f"{self.member_hparams}"
            )
        groups = [g.entry() for g in self.groups] if len(self.groups) > 1 else None
        if saved.get("member_groups") != groups:
            raise ValueError(
                "the checkpoint is of a population whose members train with other optimizers "
                f"({_classes(saved.get('member_groups'), saved['seeds'])}; this one: "
                f"{_classes(groups, self.all_seeds)})"
            )

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume: the members still alive when the checkpoint was saved, with their history.

        Runs before the weights and optimizer state are loaded, so their shapes then match.
        """
        self.check_checkpoint(checkpoint)
        self._optimizer_states_from_data(checkpoint)
        saved = checkpoint["population"]
        positions = [self.member_ids.index(m) for m in saved["member_ids"]]
        if positions != list(range(self.num_members)):
            self.select_members(positions)
        self.dropped = {int(m): why for m, why in saved["dropped"].items()}
        self.history = {int(m): h for m, h in saved["history"].items()}

    def member_checkpoint(self, member: int, epoch: int | None = None) -> dict[str, Any]:
        """A single-model checkpoint of live member ``member`` (its original index): its weights
        and the ``MNIST1DClassifier`` hyperparameters it trained with, so ``test``, ``validate``
        and ``predict --ckpt_path`` load it as the run of its own seed."""
        import lightning

        position = self.member_ids.index(member)
        state = {k: v[position].detach().clone() for k, v in self.net.state_dict().items()}
        return {
            "epoch": self.current_epoch if epoch is None else epoch,
            "global_step": self.global_step,
            "pytorch-lightning_version": lightning.__version__,
            "state_dict": {f"net.{k}": v for k, v in state.items()},
            "hyper_parameters": self.member_model_hparams(member),
        }

    def member_model_hparams(self, member: int) -> dict[str, Any]:
        """The ``MNIST1DClassifier`` hyperparameters member ``member`` trains with: its group's
        optimizer and scheduler with its own arguments."""
        hparams = {k: v for k, v in self.hparams.items() if not k.startswith("_")}
        group = self.groups[self.member_group[member]]
        hparams["optimizer"] = {
            "class_path": group.optimizer["class_path"],
            "init_args": dict(self.member_kwargs[member]),
        }
        hparams["lr_scheduler"], hparams["lr_interval"] = None, group.lr_interval
        if group.scheduler_class is not None:  # the member's own schedule
            hparams["lr_scheduler"] = {
                "class_path": group.lr_scheduler["class_path"],
                "init_args": dict(self.member_scheduler_kwargs[member]),
            }
        return hparams


def _classes(groups: list[dict[str, Any]] | None, seeds: list[int]) -> str:
    if groups is None:
        return f"all {len(seeds)} with one"
    return ", ".join(f"{g['size']} {g['optimizer']['class_path']}" for g in groups)
