"""Run artefacts: CSV and TensorBoard logs, a progress bar, and the learning-curve PNG."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from agents.common.checkpoint import atomic_write_bytes

CSV_NAME = "progress.csv"
PLOT_NAME = "learning_curve.png"
COLUMNS = (
    "iteration",
    "global_step",
    "episodes",
    "mean_return",
    "mean_length",
    "policy_loss",
    "policy_improvement",
    "kl",
    "accepted",
    "reason",
    "backtracks",
    "step_fraction",
    "cg_iterations",
    "value_loss",
    "explained_variance",
    "entropy",
    "log_std",
    "steps_per_second",
    "rollout_seconds",
    "policy_seconds",
    "value_seconds",
)


class RunLogger:
    """Writes one row per iteration to ``progress.csv`` and TensorBoard, and drives the tqdm bar.

    With ``run_dir=None`` only the progress bar (if enabled) is used. On resume, rows past the
    checkpoint's ``global_step`` are dropped from the CSV and TensorBoard purges them too, so
    the logs of a resumed run read like those of a straight one. A damaged ``progress.csv`` is
    refused (``ValueError`` naming the file and the line) before anything is written.

    ``total_steps`` is where the bar ends: the step the last iteration will reach (whole
    iterations), so the bar counts the environment steps that actually run and ends once.
    """

    def __init__(
        self,
        run_dir: Path | None,
        *,
        total_steps: int,
        start_step: int,
        progress: bool,
        log_interval: int | None = None,
    ) -> None:
        self.run_dir, self.log_interval = run_dir, log_interval
        self.writer = None
        self.csv_file = None
        if run_dir is not None:
            rows = read_progress(run_dir / CSV_NAME)
            run_dir.mkdir(parents=True, exist_ok=True)
            self._open_csv(run_dir / CSV_NAME, rows, start_step)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=min(start_step, total_steps), unit="step", dynamic_ncols=True)

    def _open_csv(self, path: Path, rows: list[dict[str, str]], start_step: int) -> None:
        kept = [row for row in rows if int(row["global_step"]) <= start_step]
        text = ",".join(COLUMNS) + "\n" + "".join(",".join(row[c] for c in COLUMNS) + "\n" for row in kept)
        atomic_write_bytes(path, text.encode())
        self.csv_file = path.open("a", newline="")
        self.csv = csv.DictWriter(self.csv_file, fieldnames=COLUMNS, extrasaction="ignore")

    def log(self, metrics: dict[str, Any]) -> None:
        step = int(metrics["global_step"])
        if self.csv_file is not None:
            self.csv.writerow({key: _format(metrics.get(key, math.nan)) for key in COLUMNS})
            self.csv_file.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.writer.add_scalar(f"train/{key}", value, step)
        if self.log_interval is not None and int(metrics["iteration"]) % self.log_interval == 0:
            self._print(metrics)
        if self.bar is not None:
            self.bar.set_postfix(
                episodes=metrics["episodes"],
                ret=f"{metrics['mean_return']:.1f}",
                kl=f"{metrics['kl']:.4f}",
                backtracks=metrics["backtracks"],
                sps=f"{metrics['steps_per_second']:.0f}",
                refresh=False,
            )
            if step >= self.bar.total:
                self.bar.n = self.bar.total  # shown once, by close(): an update would print the last line twice
            else:
                self.bar.update(step - self.bar.n)

    def _print(self, metrics: dict[str, Any]) -> None:
        line = (
            f"iteration {metrics['iteration']}  steps {metrics['global_step']}  "
            f"return {metrics['mean_return']:.2f}  length {metrics['mean_length']:.1f}  kl {metrics['kl']:.4f}  "
            f"value_loss {metrics['value_loss']:.4g}  steps/s {metrics['steps_per_second']:.0f}"
        )
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.csv_file is not None:
            self.csv_file.close()


def _format(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))


def read_progress(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a run's ``progress.csv`` (none if it does not exist), checked.

    A last line cut short (a run killed while writing it) is dropped; any other damage, or a
    header that is not this version's, is a one-line ``ValueError`` naming the file and the line.
    """
    path = Path(path)
    if not path.exists():
        return []
    fix = f"move it aside (e.g. rename it to {path.name}.bak) to continue with a new log"
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or tuple(reader.fieldnames) != COLUMNS:
                raise ValueError(f"{path} is not a progress log of this version (unexpected header); {fix}")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"cannot read {path} ({error}); {fix}") from error
    if rows and _incomplete(rows[-1]):
        rows.pop()  # the last line was being written when the run stopped
    for index, row in enumerate(rows):
        if _incomplete(row) or None in row:
            raise ValueError(f"{path} is damaged at line {index + 2} (not {len(COLUMNS)} columns); {fix}")
        try:
            int(row["global_step"])
        except ValueError:
            raise ValueError(
                f"{path} is damaged at line {index + 2} (global_step {row['global_step']!r}); {fix}"
            ) from None
    return rows


def _incomplete(row: dict[str, Any]) -> bool:
    return any(row.get(column) is None for column in COLUMNS)


def plot_learning_curve(
    csv_path: str | os.PathLike[str], png_path: str | os.PathLike[str], title: str, evaluation: float | None = None
) -> None:
    """Mean training return (last 100 episodes) against environment steps, saved as a PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_csv(csv_path)
    steps = [int(row["global_step"]) for row in rows]
    returns = [float(row["mean_return"]) for row in rows]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(steps, returns, label="training (mean of last 100 episodes)")
    if evaluation is not None and steps:
        axis.scatter([steps[-1]], [evaluation], color="black", zorder=3, label="final deterministic evaluation")
    axis.set_xlabel("environment steps")
    axis.set_ylabel("episode return")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    figure.tight_layout()
    temporary = Path(png_path).with_suffix(".tmp.png")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, png_path)
