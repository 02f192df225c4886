"""Training metrics as JSON lines next to the checkpoints, and the plots of loss and learning rate.

One line per logged step, e.g. `{"step": 100, "loss": 3.21, "lr": 0.0003, "tokens": 204800, ...}`; evaluation
lines carry `val_loss`. JSONL survives a crash (a last line torn by a kill during a write is skipped when read
and dropped at the next resume) and a resume: the lines of steps after the checkpoint being resumed are
dropped, so the file always tells the story of one run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends records to `directory / metrics.jsonl` (only the main process writes)."""

    def __init__(self, directory: str | Path, *, enabled: bool = True) -> None:
        self.path = Path(directory) / METRICS_FILE
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Forget records of steps later than `step` (they belong to the part of the run being redone)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [record for record in read_metrics(self.path) if record.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics file (a run directory or the `metrics.jsonl` itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no metrics file at {str(path)!r}: is it the output directory of a training run?")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # a kill in the middle of a write tears the last line: skip it
                break
            raise ValueError(f"line {number} of {path} is not JSON ({line[:60]!r}): the file is damaged; delete "
                             "that line") from None
    return records


def plot_metrics(path: str | Path, output: str | Path | None = None):
    """Training and validation loss, and the learning rate, against the optimizer step.

    Returns the matplotlib figure; saves it to `output` (e.g. `loss.png`) when given.
    """
    import matplotlib

    if output is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    records = read_metrics(path)
    train = [r for r in records if "loss" in r and math.isfinite(r["loss"])]
    val = [r for r in records if "val_loss" in r]
    figure, (loss_axis, lr_axis) = plt.subplots(1, 2, figsize=(8, 3.2))
    loss_axis.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", linewidth=1)
    if val:
        loss_axis.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    loss_axis.set(xlabel="optimizer step", ylabel="cross-entropy (nats/token)", title="loss")
    loss_axis.legend()
    lr_axis.plot([r["step"] for r in train], [r["lr"] for r in train])
    lr_axis.set(xlabel="optimizer step", ylabel="learning rate", title="warm-up + cosine schedule")
    figure.tight_layout()
    if output is not None:
        figure.savefig(output, dpi=120)
    return figure
