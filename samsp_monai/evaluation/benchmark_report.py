"""Tables and learning curves of a quality benchmark (scripts/benchmark_quality.py) from its results.json."""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..atomic import atomic_write_text

PASS_EVALS = (("pass1", "pass 1 (no prompt)"), ("k1", "K = 1"), ("k2", "K = 2"), ("k3", "K = 3"))


def csv_rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per run and scoring: overall Dice/IoU/HD95, per-class Dice, size and time of the arm."""
    rows = []
    for run in runs:
        for tag, ev in run["evals"].items():
            row = {"benchmark": run["benchmark"], "arm": run["arm"], "seed": run["seed"], "eval": tag}
            row |= {m: ev["overall"][m] for m in ("dice", "iou", "hd95_mm")}
            row |= {f"dice_{c['class_name']}": c["dice"]["mean"] for c in ev["classes"].values()}
            row |= {k: run[k] for k in ("epochs", "image_size", "variant", "best_val_dice", "best_epoch")}
            row |= {k: run[k] for k in ("params", "trainable_params", "train_s_per_epoch", "val_s_per_epoch")}
            rows.append(row)
    return rows


def mean_std(values: Sequence[float | None], scale: float = 1.0, digits: int = 2) -> str:
    """`mean ± std` over seeds (population std; just the value for one seed); a value missing in a run gives n/a."""
    if not values or any(v is None for v in values):
        return "n/a"
    v = np.asarray(values, dtype=float) * scale
    return f"{v.mean():.{digits}f}" if len(v) == 1 else f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def headline(run: Mapping[str, Any]) -> Mapping[str, float]:
    """Overall Dice/IoU/HD95 of the scoring a run is reported by (`primary_eval`)."""
    return run["evals"][run["primary_eval"]]["overall"]


def dice_by_seed(runs: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    return {r["seed"]: headline(r)["dice"] for r in runs}


def by_arm(runs: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        grouped.setdefault(run["arm"], []).append(run)
    return grouped


def markdown_tables(runs: Sequence[Mapping[str, Any]]) -> str:
    """The headline table (each arm's own scoring) and, for self-prompting arms, Dice per number of passes."""
    head = "| arm | seeds | Dice (%) | IoU (%) | HD95 (mm) | best val Dice (%) | params | s/epoch (train + val) |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    passes = ["| arm | " + " | ".join(name for _, name in PASS_EVALS) + " |", "|---|" + "---|" * len(PASS_EVALS)]
    for arm, arm_runs in by_arm(runs).items():
        main = [headline(r) for r in arm_runs]
        seconds = mean_std([r["train_s_per_epoch"] for r in arm_runs], digits=1)
        seconds += " + " + mean_std([r["val_s_per_epoch"] for r in arm_runs], digits=1)
        cells = [
            arm,
            ",".join(str(r["seed"]) for r in arm_runs),
            mean_std([m["dice"] for m in main], 100),
            mean_std([m["iou"] for m in main], 100),
            mean_std([m["hd95_mm"] for m in main]),
            mean_std([r["best_val_dice"] for r in arm_runs], 100),
            f"{arm_runs[0]['params'] / 1e6:.2f} M",
            seconds,
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if all(tag in arm_runs[0]["evals"] for tag, _ in PASS_EVALS):
            dice = [mean_std([r["evals"][tag]["overall"]["dice"] for r in arm_runs], 100) for tag, _ in PASS_EVALS]
            passes.append(f"| {arm} | " + " | ".join(dice) + " |")
    text = "Scored on the validation split in original geometry (mean ± std over seeds).\n\n" + "\n".join(lines)
    if len(passes) > 2:
        text += "\n\nDice (%) of the self-prompting arms by number of passes at inference:\n\n" + "\n".join(passes)
    return text + "\n"


def gap_verdict(arm: Sequence[float], baseline: Sequence[float]) -> tuple[float, float, str]:
    """Mean gap (arm - baseline) and the noise it must beat: two of the larger of the two seed spreads
    (population std), the rule benchmarks/README.md states; the verdict says which side of it the gap lies."""
    a, b = np.asarray(arm, dtype=float), np.asarray(baseline, dtype=float)
    gap, noise = float(a.mean() - b.mean()), 2.0 * float(max(a.std(), b.std()))
    verdict = "within noise" if abs(gap) <= noise else ("better" if gap > 0 else "worse")
    return gap, noise, verdict


def comparison_table(runs: Sequence[Mapping[str, Any]], baseline: str = "single_pass") -> str:
    """Each arm against the baseline on the seeds both ran (at least 3, as a deciding comparison needs):
    the Dice gap in points, the noise it must beat, the verdict, and the gap of each seed (seed s starts every SAM
    arm from the same initial weights, so a gap of one sign on every seed is paired evidence).
    Empty when no arm qualifies."""
    grouped = by_arm(runs)
    base = dice_by_seed(grouped.get(baseline, []))
    lines = []
    for arm, arm_runs in grouped.items():
        dice = dice_by_seed(arm_runs)
        seeds = sorted(set(dice) & set(base))
        if arm == baseline or len(seeds) < 3:
            continue
        gap, noise, verdict = gap_verdict([dice[s] for s in seeds], [base[s] for s in seeds])
        per_seed = ", ".join(f"{100 * (dice[s] - base[s]):+.2f}" for s in seeds)
        cells = [arm, ",".join(map(str, seeds)), f"{100 * gap:+.2f}", f"{100 * noise:.2f}", verdict, per_seed]
        lines.append("| " + " | ".join(cells) + " |")
    if not lines:
        return ""
    head = f"Against `{baseline}` on the same seeds (Dice points; noise = 2 x the larger seed std of the two):\n\n"
    head += "| arm | seeds | Dice gap | noise | verdict | gap per seed |\n|---|---|---|---|---|---|\n"
    return head + "\n".join(lines) + "\n"


def plot_learning_curves(runs: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str) -> None:
    """Validation Dice per epoch: one colour per arm, one line per seed."""
    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot()
    colours = {arm: f"C{i}" for i, arm in enumerate(by_arm(runs))}
    for arm, arm_runs in by_arm(runs).items():
        for i, run in enumerate(arm_runs):
            epochs = [h["epoch"] for h in run["history"]]
            ax.plot(epochs, [h["val_dice"] for h in run["history"]], "o-", color=colours[arm], label=None if i else arm)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation Dice")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def draw_figures(runs: Sequence[Mapping[str, Any]], figures: Path) -> list[tuple[Mapping[str, Any], Path]]:
    """Copy the best and worst case overlays of each arm's lowest seed into `figures/`, named by arm, seed,
    kind and case (every run draws them; one set per arm is the report's)."""
    figures.mkdir(parents=True, exist_ok=True)
    shown = []
    for arm_runs in by_arm(runs).values():
        run = min(arm_runs, key=lambda r: r["seed"])
        for o in run.get("overlays", []):
            target = figures / f"{run['arm']}_seed{run['seed']}_{o['kind']}_{o['case']}.png"
            shutil.copyfile(o["png"], target)
            shown.append((o, target))
    return shown


def write_reports(summary: Mapping[str, Any], out: Path) -> list[Path]:
    """results.csv, results.md (tables, curve and overlays) and learning_curves.png beside results.json;
    returns the figures results.md shows."""
    runs = summary["runs"]
    rows = csv_rows(runs)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    plot_learning_curves(runs, out / "learning_curves.png", f"{summary['benchmark']}: validation Dice per epoch")
    figures = draw_figures(runs, out / "figures")
    comparison = comparison_table(runs)
    md = f"# {summary['benchmark']}\n\n{markdown_tables(runs)}\n" + (f"{comparison}\n" if comparison else "")
    md += "![learning curves](learning_curves.png)\n"
    for o, target in figures:
        png = target.relative_to(out)
        md += f"\n![{o['kind']} {o['case']}]({png}) {o['arm']}, {o['kind']}: {o['case']} (Dice {o['dice']:.3f})\n"
    atomic_write_text(out / "results.md", md)
    return [target for _, target in figures]
