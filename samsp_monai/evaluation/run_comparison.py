"""Compare the MLflow runs of one experiment (ablations, LoRA ranks, data sets): what differs and what it gave.

The table has one row per run: its name, id and status, the params whose values differ between the runs, the
best value of the key metric (higher is better, e.g. validation Dice) with its epoch and its final value, and
the final value of every other metric. The plot shows the key metric per epoch, one line per run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from mlflow import MlflowClient
from mlflow.entities import Run


def find_runs(client: MlflowClient, experiment_name: str, filter_string: str = "", max_runs: int = 100) -> list[Run]:
    """The runs of `experiment_name` that match an MLflow filter (e.g. `params.self_prompt = 'False'`), oldest first,
    so that the table and the legend follow the order in which the runs were made."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise ValueError(f"no experiment {experiment_name!r} at {client.tracking_uri} (experiments: {known})")
    return client.search_runs(
        [experiment.experiment_id], filter_string, max_results=max_runs, order_by=["attributes.start_time ASC"]
    )


def differing_params(runs: Sequence[Run]) -> list[str]:
    """Names of the params that do not have one same value in all runs (a param missing from a run differs)."""
    names = sorted({name for run in runs for name in run.data.params})
    return [name for name in names if len({run.data.params.get(name) for run in runs}) > 1]


def metric_by_step(client: MlflowClient, run_id: str, metric: str) -> dict[int, float]:
    """{step: value} of `metric`, steps ascending. A step logged twice keeps its latest value: an epoch that a crash
    interrupted after its validation is validated again when the run resumes, and only that second value belongs
    to the run that goes on (one training run is one MLflow run across its resumes)."""
    points = sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
    return {m.step: m.value for m in points}


def comparison_table(client: MlflowClient, runs: Sequence[Run], metric: str = "val_mean_dice") -> pd.DataFrame:
    """One row per run: the params that differ, best/best epoch/final of `metric`, final of the other metrics
    (less `best_<metric>`/`best_epoch`, which `MLflowRunDetails` logs and the history already gives)."""
    params = differing_params(runs)
    others = sorted({name for run in runs for name in run.data.metrics} - {metric, f"best_{metric}", "best_epoch"})
    rows = []
    for run in runs:
        history = metric_by_step(client, run.info.run_id, metric)
        best = max(history, key=history.__getitem__, default=None)  # the first epoch that reached the best
        final = max(history, default=None)
        rows.append(
            {
                "run_name": run.info.run_name,
                "run_id": run.info.run_id,
                "status": run.info.status,
                **{name: run.data.params.get(name) for name in params},
                f"best {metric}": history.get(best),
                "best epoch": best,
                f"final {metric}": history.get(final),
                **{f"final {name}": run.data.metrics.get(name) for name in others},
            }
        )
    return pd.DataFrame(rows)


def format_cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (pandas' own `to_markdown` needs the `tabulate` package)."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(format_cell(v) for v in row) + " |" for row in table.astype(object).itertuples(False)]
    return "\n".join(lines)


def run_label(run: Run, label_params: Sequence[str] = ()) -> str:
    """The run name, followed by the given params (`name (self_prompt=False, lora_rank=4)`) to tell ablations apart."""
    values = ", ".join(f"{name}={run.data.params.get(name)}" for name in label_params)
    return f"{run.info.run_name} ({values})" if values else run.info.run_name


def plot_metric_history(
    client: MlflowClient,
    runs: Sequence[Run],
    metric: str,
    path: str | Path,
    title: str | None = None,
    label_params: Sequence[str] = (),
) -> Path:
    """Line plot of `metric` per step (epoch) for each run that logged it, saved as an image at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for run in runs:
        history = metric_by_step(client, run.info.run_id, metric)
        if history:
            ax.plot(list(history), list(history.values()), marker="o", label=run_label(run, label_params))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(title or metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
