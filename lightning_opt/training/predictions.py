"""``predict``'s outputs as a CSV file (``fit``'s ``predict`` subcommand with ``--predictions``)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from lightning_opt.core.atomic import replacing


class PredictionCSV(Callback):
    """Write ``predict``'s outputs as CSV: one row per example (and per member of a population),
    with columns ``[seed,] index, label, predicted, p0 .. p<C-1>``; ``index`` is the example's
    position in the predicted split.

    Args:
        path: the CSV file to write (its folder is created).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows: list[list[Any]] = []
        self.columns: list[str] = []
        self._offset = 0

    @override
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows, self.columns, self._offset = [], [], 0

    @override
    def on_predict_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        labels, probs = outputs["label"].tolist(), outputs["probs"]
        seeds = outputs.get("seeds")
        if seeds is None:
            probs = probs.unsqueeze(0)
        classes = probs.shape[-1]
        self.columns = [*(["seed"] if seeds is not None else []), "index", "label", "predicted",
                        *(f"p{c}" for c in range(classes))]  # fmt: skip
        predicted = probs.argmax(-1).tolist()
        values = probs.tolist()
        for member in range(probs.shape[0]):
            for i, label in enumerate(labels):
                row = [self._offset + i, label, predicted[member][i], *values[member][i]]
                self.rows.append([seeds[member], *row] if seeds is not None else row)
        self._offset += len(labels)

    @override
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        import csv
        from pathlib import Path

        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.columns)
            writer.writerows(sorted(self.rows, key=lambda r: tuple(r[:2])))
