"""Compare the MLflow runs of an experiment: print a table of the params that differ and the best/final metrics,
and save it as CSV with a plot of the key metric per epoch (logic: samsp_monai.evaluation.run_comparison).

Usage:
    python scripts/compare_runs.py                # bundle/eval/mlruns.db, experiment samsp -> bundle/eval/comparison/
    python scripts/compare_runs.py --tracking_uri http://127.0.0.1:5000 --out_dir comparison
    python scripts/compare_runs.py --filter "tags.workflow = 'training' and params.lora_rank = '4'"
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from monai.utils import path_to_sqlite_uri

from samsp_monai.evaluation.run_comparison import comparison_table, find_runs, plot_metric_history, to_markdown
from samsp_monai.paths import default_bundle_root

DEFAULT_STORE = Path(default_bundle_root()) / "eval" / "mlruns.db"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tracking_uri",
        default=os.environ.get("MLFLOW_TRACKING_URI") or path_to_sqlite_uri(str(DEFAULT_STORE)),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the bundle's bundle/eval/mlruns.db)",
    )
    parser.add_argument("--experiment", default="samsp", help="experiment name (default samsp)")
    parser.add_argument("--filter", default="", help="MLflow search filter, e.g. \"params.self_prompt = 'False'\"")
    parser.add_argument(
        "--metric", default="val_mean_dice", help="key metric, higher is better (default val_mean_dice)"
    )
    parser.add_argument(
        "--label_params", nargs="*", default=[], help="params added to the plot legend, e.g. self_prompt lora_rank"
    )
    parser.add_argument("--max_runs", type=int, default=100, help="at most this many runs, oldest first")
    parser.add_argument("--format", choices=["markdown", "csv"], default="markdown", help="table printed to stdout")
    parser.add_argument(
        "--out_dir",
        type=Path,
        help="where the CSV and PNG go (default: comparison/ beside a local SQLite store, else bundle/eval/comparison)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    local_db = args.tracking_uri.removeprefix("sqlite:///")
    if args.tracking_uri.startswith("sqlite:///") and not Path(local_db).is_file():
        sys.exit(f"error: no MLflow store at {local_db}; train with --tracking mlflow first or pass --tracking_uri")
    client = MlflowClient(args.tracking_uri)
    try:
        runs = find_runs(client, args.experiment, args.filter, args.max_runs)
    except (ValueError, MlflowException) as e:
        sys.exit(f"error: {e}")
    if not runs:
        sys.exit(f"error: no runs in experiment {args.experiment!r} match {args.filter!r}")
    table = comparison_table(client, runs, args.metric)
    if args.out_dir is None:  # never the current folder: a repository checkout would collect untracked files
        local = args.tracking_uri.startswith("sqlite:///")
        args.out_dir = (Path(local_db).parent if local else DEFAULT_STORE.parent) / "comparison"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = args.out_dir / f"{args.experiment}_runs.csv"
    table.to_csv(csv_path, index=False)
    png_path = plot_metric_history(
        client,
        runs,
        args.metric,
        args.out_dir / f"{args.experiment}_{args.metric}.png",
        title=args.experiment,
        label_params=args.label_params,
    )
    print(to_markdown(table) if args.format == "markdown" else table.to_csv(index=False), end="\n\n")
    print(f"{len(runs)} runs; table: {csv_path}; plot: {png_path}")


if __name__ == "__main__":
    main()
