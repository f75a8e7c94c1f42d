"""Quality benchmark: does self-prompting pay? SAM-SP vs single-pass vs UNet on real data, at equal settings.

Every arm trains and is scored through the bundle's own configs (train.json [+ image2d.json] + scratch.json
for training, inference.json + evaluate.json for scoring), with the same data split, epochs, seed, slices
and augmentation; an arm differs only by its overrides (ARMS). Each arm and seed gets its own bundle_root
under OUT/<benchmark>/runs/, named by the hash of its settings, so a rerun skips the finished ones and
resumes an interrupted one from its training_state.pt. The arms run one after the other in a child process
whose log goes to OUT/<benchmark>/log-<pid>.txt; this process prints one line per epoch with an ETA. Two
commands with different arms or seeds may run into the same OUT at once (each with OMP_NUM_THREADS=1 on a
2-core machine); a last command naming all of them (with --report-only: run none) then reports them together.

    python scripts/benchmark_quality.py kvasir --seeds 0 1 2 --out benchmarks/out
    python scripts/benchmark_quality.py hippocampus --seeds 0 1 2 --out benchmarks/out

Writes OUT/<benchmark>/results.json, results.csv, results.md (the tables), learning_curves.png and
figures/ (overlays of the best and worst validation case per arm, lowest seed).
"""

from __future__ import annotations

import argparse
import csv
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
sys.path.insert(0, str(REPO))

from samsp_monai.data.datalist import build_datalist, write_json_atomic  # noqa: E402
from samsp_monai.errors import SAMSPError  # noqa: E402
from samsp_monai.evaluation.benchmark_report import headline, write_reports  # noqa: E402


@dataclass(frozen=True)
class Benchmark:
    """One data set: where it lies, how its datalist is made, which configs train and score it."""

    data: str
    layout: str
    train_configs: tuple[str, ...]
    eval_configs: tuple[str, ...]
    image_size: int
    epochs: int
    arms: tuple[str, ...]


BENCHMARKS = {
    "kvasir": Benchmark(
        "kvasir-seg",
        "images",
        ("train.json", "image2d.json", "scratch.json"),
        ("inference.json", "evaluate.json", "image2d.json", "scratch.json"),
        128,
        25,
        ("samsp", "single_pass", "samsp_no_distill", "unet", "samsp_gt0.5", "samsp_gt_anneal"),
    ),
    "hippocampus": Benchmark(
        "msd-hippocampus",
        "msd",
        ("train.json", "scratch.json"),
        ("inference.json", "evaluate.json", "scratch.json"),
        128,
        30,
        ("samsp", "single_pass", "unet", "samsp_gt_anneal"),
    ),
}

UNET = json.loads((CONFIGS / "unet.json").read_text())  # the UNet baseline users run with the bundle

# What each arm changes in train.json; everything else is shared by all arms.
ARMS: dict[str, dict[str, Any]] = {
    "samsp": {"self_prompt": True, "distill": True},
    "single_pass": {"self_prompt": False, "distill": False},
    "samsp_no_distill": {"self_prompt": True, "distill": False},
    "unet": UNET,
    # Pass 2 sees the jittered ground-truth box instead of pass 1's with this probability (train.json gt_box_*).
    "samsp_gt0.5": {"self_prompt": True, "distill": True, "gt_box_prob": 0.5},
    "samsp_gt_anneal": {
        "self_prompt": True,
        "distill": True,
        "gt_box_prob": 1.0,
        "gt_box_anneal_epochs": "$@max_epochs",
    },
}

# Scorings of a trained arm (overrides of inference.json); the first is the arm's headline result.
SELF_PROMPT_EVALS = {
    "k1": {"iterations": 1},
    "pass1": {"self_prompt": False},
    "k2": {"iterations": 2},
    "k3": {"iterations": 3},
}
PLAIN_EVALS = {"final": {}}


def evals_of(arm: str) -> dict[str, dict[str, Any]]:
    """Self-prompting arms are also scored after pass 1 alone and with K = 2, 3 self-prompts at inference."""
    return SELF_PROMPT_EVALS if ARMS[arm].get("self_prompt") else PLAIN_EVALS


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    parser.add_argument("--epochs", type=int, help="training epochs of every arm (default: kvasir 25, hippocampus 30)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0)")
    parser.add_argument("--image-size", type=int, help="model input size (default: 128)")
    parser.add_argument(
        "--variant",
        default="vit_demo",
        help="SAM variant: vit_demo (default) and the vit_* variants train from random init; lite_medsam fine-tunes "
        "LiteMedSAM's pretrained decoder on its frozen encoder (256 px, embeddings cached in OUT/embedding_cache)",
    )
    parser.add_argument("--arms", nargs="+", help="arms to run (default: all of the benchmark's)")
    parser.add_argument("--max-cases", type=int, help="first N training and N validation cases only (smoke runs)")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument(
        "--report-only", action="store_true", help="report the finished runs among these arms and seeds, run none"
    )
    parser.add_argument("--publish", type=Path, help="also copy the report, not the runs, to DIR/<benchmark>/")
    parser.add_argument("--run-jobs", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# Pretrained variants: what their SAM arms change (no scratch.json: pretrained weights, frozen cached encoder).
PRETRAINED = {"lite_medsam": {"encoder_training": "frozen", "num_workers": 0}}
FROM_SCRATCH = "scratch.json"


def arm_configs(configs: Sequence[str], arm: str, variant: str) -> list[str]:
    """A pretrained variant's SAM arms train without scratch.json; the UNet always trains from scratch."""
    keep_scratch = variant not in PRETRAINED or "network_def" in ARMS[arm]
    return [str(CONFIGS / c) for c in configs if keep_scratch or c != FROM_SCRATCH]


def make_datalist(bench: Benchmark, root: Path, out: Path, max_cases: int | None) -> tuple[Path, str]:
    """The benchmark's split (Kvasir: official train.txt/val.txt; MSD: seed 0, 20 %), optionally truncated,
    saved under its own hash, so runs with other cases (a smoke run into the same OUT) never change it."""
    datalist = build_datalist(bench.layout, root)
    if max_cases is not None:
        datalist = {split: cases[:max_cases] for split, cases in datalist.items()}
    sha = hashlib.sha256(json.dumps(datalist, sort_keys=True).encode()).hexdigest()
    path = out / f"datalist-{sha[:8]}.json"
    write_json_atomic(datalist, path)
    return path, sha


def settings_key(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def watch(proc: subprocess.Popen, jobs: Sequence[Mapping[str, Any]], log: Path) -> list[dict[str, Any]]:
    """Follow the child through `jobs`: one line per epoch as each history.json grows, one per finished arm."""
    results, begun = [], time.monotonic()
    for n, job in enumerate(jobs):
        root, shown, start = Path(job["bundle_root"]), 0, time.monotonic()
        label = f"[{n + 1}/{len(jobs)}] {job['benchmark']} {job['arm']} seed {job['seed']}"
        eta = f"; benchmark ETA {(time.monotonic() - begun) / n * (len(jobs) - n) / 60:.0f} min" if n else ""
        print(f"{label}: training {job['epochs']} epochs in {root}", flush=True)
        while True:
            exited = proc.poll() is not None
            history = json.loads((root / "history.json").read_text()) if (root / "history.json").is_file() else []
            for h in history[shown:]:
                left = (job["epochs"] - h["epoch"]) * (h["train_s"] + h["val_s"])
                print(
                    f"    epoch {h['epoch']}/{job['epochs']}: val Dice {h['val_dice']:.4f}, {h['train_s']:.1f} s train"
                    f" + {h['val_s']:.1f} s val (arm training ETA {left / 60:.1f} min{eta})",
                    flush=True,
                )
            shown = len(history)
            if (root / "result.json").is_file():
                break
            if exited:
                tail = log.read_text()[-3000:]
                raise SAMSPError(f"{label} failed (bundle_root {root}); the log {log} ends:\n{tail}")
            time.sleep(2)
        result = json.loads((root / "result.json").read_text())
        scores = headline(result)
        print(
            f"{label}: done in {(time.monotonic() - start) / 60:.1f} min, Dice {scores['dice']:.4f}, "
            f"IoU {scores['iou']:.4f}, HD95 {scores['hd95_mm']:.2f} mm",
            flush=True,
        )
        results.append(result)
    return results


def run_jobs_process(jobs: Sequence[Mapping[str, Any]], out: Path) -> list[dict[str, Any]]:
    """Run the arms in one child process (imports paid once; its log: OUT/<benchmark>/log-<pid>.txt) and follow
    it. The files are named by this process, so that a second command running into the same OUT keeps its own."""
    jobs_file, log = out / f"pending_jobs-{os.getpid()}.json", out / f"log-{os.getpid()}.txt"
    write_json_atomic(list(jobs), jobs_file)
    cmd = [sys.executable, str(Path(__file__).resolve()), jobs[0]["benchmark"], "--run-jobs", str(jobs_file)]
    with open(log, "a") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            results = watch(proc, jobs, log)
        except BaseException:
            proc.terminate()
            raise
        proc.wait()
    jobs_file.unlink()
    return results


def run_benchmark(args: argparse.Namespace) -> Path:
    bench = BENCHMARKS[args.benchmark]
    arms = args.arms or list(bench.arms)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SAMSPError(f"unknown arm(s) {unknown}; choose from {sorted(ARMS)}")
    data_root = (args.data_root / bench.data).resolve()
    if not data_root.is_dir():
        raise SAMSPError(f"data folder {data_root} not found; pass --data-root (the folder holding {bench.data}/)")
    out = (args.out / args.benchmark).resolve()
    out.mkdir(parents=True, exist_ok=True)
    datalist, datalist_sha = make_datalist(bench, data_root, out, args.max_cases)
    pretrained = PRETRAINED.get(args.variant)
    image_size = args.image_size or (256 if pretrained else bench.image_size)
    epochs = args.epochs or bench.epochs
    cache = {"embedding_cache": str(out.parent / "embedding_cache")} if pretrained else {}
    jobs = []
    for arm in arms:
        for seed in args.seeds:
            settings = {
                "benchmark": args.benchmark,
                "arm": arm,
                "overrides": ARMS[arm] if "network_def" in ARMS[arm] else ARMS[arm] | (pretrained or {}),
                "evals": evals_of(arm),
                "epochs": epochs,
                "seed": seed,
                "image_size": image_size,
                "variant": args.variant,
                "datalist_sha256": datalist_sha,
            }
            root = out / "runs" / f"{arm}-seed{seed}-{settings_key(settings)}"
            jobs.append(
                settings
                | {
                    "bundle_root": str(root),
                    "dataset_dir": str(data_root),
                    "datalist_file": str(datalist),
                    "train_configs": arm_configs(bench.train_configs, arm, args.variant),
                    "eval_configs": arm_configs(bench.eval_configs, arm, args.variant),
                    "cache": {} if "network_def" in ARMS[arm] else cache,
                }
            )
    done = [j for j in jobs if (Path(j["bundle_root"]) / "result.json").is_file()]
    for job in done:
        print(f"{args.benchmark} {job['arm']} seed {job['seed']}: already complete ({job['bundle_root']}), skipped")
    pending = [j for j in jobs if j not in done]
    if args.report_only:
        for job in pending:
            print(f"{args.benchmark} {job['arm']} seed {job['seed']}: not run, left out of the report (--report-only)")
        if not done:
            raise SAMSPError(f"no finished run of these arms and seeds in {out / 'runs'}; nothing to report")
        jobs = done
    elif pending:
        run_jobs_process(pending, out)
    results = [json.loads((Path(j["bundle_root"]) / "result.json").read_text()) for j in jobs]
    summary = {"benchmark": args.benchmark, "data": str(data_root), "datalist": str(datalist), "runs": results}
    write_json_atomic(summary, out / "results.json")
    figures = write_reports(summary, out)
    if args.publish:
        out = publish(out, figures, args.publish / args.benchmark)
    print(f"{len(results)} runs of {args.benchmark}: results.json/.csv/.md, learning_curves.png, figures/ in {out}")
    return out / "results.json"


def publish(out: Path, figures: Sequence[Path], target: Path) -> Path:
    """Copy the report and the figures it shows, without the runs (models, predictions), e.g. into the
    committed benchmarks/ folder; results.md links its figures relatively, so it reads the same there."""
    shutil.rmtree(target / "figures", ignore_errors=True)
    (target / "figures").mkdir(parents=True)
    for name in ("results.json", "results.csv", "results.md", "learning_curves.png"):
        shutil.copyfile(out / name, target / name)
    for figure in figures:
        shutil.copyfile(figure, target / "figures" / figure.name)
    return target


# ---- child process: the arms, one after the other ---------------------------------------------------------


def record_epochs(job: Mapping[str, Any], trainer: Any, evaluator: Any) -> None:
    """Append validation Dice and the times of each epoch to history.json (kept across resumed runs)."""
    from ignite.engine import Events

    path = Path(job["bundle_root"]) / "history.json"
    history = json.loads(path.read_text()) if path.is_file() else []

    def record(engine: Any) -> None:
        epoch = engine.state.epoch
        history[:] = [h for h in history if h["epoch"] < epoch]
        history.append(
            {
                "epoch": epoch,
                "val_dice": float(evaluator.state.metrics[evaluator.state.key_metric_name]),
                "train_s": float(engine.state.times["EPOCH_COMPLETED"]),
                "val_s": float(evaluator.state.times["COMPLETED"]),
            }
        )
        write_json_atomic(history, path)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, record)


def bundle_overrides(job: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "bundle_root": job["bundle_root"],
        "dataset_dir": job["dataset_dir"],
        "datalist_file": job["datalist_file"],
        "image_size": job["image_size"],
        "sam_variant": job["variant"],
        **job.get("cache", {}),
        **job["overrides"],
    }


def train(job: Mapping[str, Any]) -> dict[str, Any]:
    from monai.bundle import ConfigWorkflow

    root = Path(job["bundle_root"])
    overrides = bundle_overrides(job) | {"seed": job["seed"], "max_epochs": job["epochs"]}
    wf = ConfigWorkflow(config_file=job["train_configs"], workflow_type="train", logging_file=False, **overrides)
    # a finished run (its scoring interrupted) is not initialised again: its training state refuses to continue
    if not (root / "trained.json").is_file():
        wf.initialize()
        trainer, evaluator = (wf.parser.get_parsed_content(k) for k in ("train#trainer", "validate#evaluator"))
        record_epochs(job, trainer, evaluator)
        wf.run()
        best = json.loads((root / "models" / "model.json").read_text())
        write_json_atomic({"best_val_dice": best["metric_value"], "best_epoch": best["epoch"]}, root / "trained.json")
        wf.finalize()
    network = wf.parser.get_parsed_content("network")
    trained = json.loads((root / "trained.json").read_text())
    return trained | {
        "params": sum(p.numel() for p in network.parameters()),
        "trainable_params": sum(p.numel() for p in network.parameters() if p.requires_grad),
    }


def evaluate(job: Mapping[str, Any], overrides: Mapping[str, Any], output_dir: Path, num_overlays: int) -> dict:
    from monai.bundle import ConfigWorkflow

    settings = bundle_overrides(job) | dict(overrides)
    settings |= {"output_dir": str(output_dir), "num_overlays": num_overlays}
    wf = ConfigWorkflow(config_file=job["eval_configs"], workflow_type=None, logging_file=False, **settings)
    wf.initialize()
    wf.run()
    wf.finalize()
    return json.loads((output_dir / "metrics_summary.json").read_text())


def case_scores(csv_path: Path) -> dict[str, float]:
    """Mean Dice per case over its scored classes (rows flagged both_empty are left out, as in the summary)."""
    per_case: dict[str, list[float]] = {}
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            if row["status"] != "both_empty":
                per_case.setdefault(row["case"], []).append(float(row["dice"]))
    return {case: sum(v) / len(v) for case, v in per_case.items()}


def case_of(entry: Mapping[str, str]) -> str:
    name = Path(entry["image"]).name
    return Path(name[:-3] if name.endswith(".gz") else name).stem


def best_and_worst_overlays(job: Mapping[str, Any], scores: Mapping[str, float], primary: Mapping[str, Any]) -> list:
    """Score the best and the worst validation case again with overlays (the report names and shows them)."""
    best, worst = max(scores, key=scores.get), min(scores, key=scores.get)
    datalist = json.loads(Path(job["datalist_file"]).read_text())
    picked = [e for e in datalist["validation"] if case_of(e) in (best, worst)]
    root = Path(job["bundle_root"])
    write_json_atomic({"validation": picked}, root / "best_worst.json")
    evaluate(job | {"datalist_file": str(root / "best_worst.json")}, primary, root / "eval" / "best_worst", 2)
    overlays = root / "eval" / "best_worst" / "overlays"
    return [
        {"arm": job["arm"], "kind": kind, "case": case, "dice": scores[case], "png": str(overlays / f"{case}.png")}
        for kind, case in (("best", best), ("worst", worst))
    ]


def run_job(job: Mapping[str, Any]) -> None:
    """Train one arm and seed, score it, and write result.json (the mark of a finished arm) last."""
    print(f"==== {job['arm']} seed {job['seed']}: {job['bundle_root']}", flush=True)
    root = Path(job["bundle_root"])
    root.mkdir(parents=True, exist_ok=True)
    result = {k: job[k] for k in ("benchmark", "arm", "seed", "epochs", "image_size", "variant", "overrides")}
    result |= train(job)
    history = json.loads((root / "history.json").read_text())
    result["history"] = history
    result["train_s_per_epoch"] = sum(h["train_s"] for h in history) / len(history)
    result["val_s_per_epoch"] = sum(h["val_s"] for h in history) / len(history)
    result["evals"] = {}
    for tag, overrides in job["evals"].items():
        start = time.monotonic()
        summary = evaluate(job, overrides, root / "eval" / tag, 0)
        result["evals"][tag] = {"overall": summary["overall"], "classes": summary["classes"]}
        result["evals"][tag]["seconds"] = time.monotonic() - start
        print(f"{tag}: {summary['overall']}", flush=True)
    primary_tag = next(iter(job["evals"]))
    result["primary_eval"] = primary_tag
    scores = case_scores(root / "eval" / primary_tag / "metrics_per_case.csv")
    result["overlays"] = best_and_worst_overlays(job, scores, job["evals"][primary_tag]) if scores else []
    write_json_atomic(result, root / "result.json")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.run_jobs:
        for job in json.loads(args.run_jobs.read_text()):
            run_job(job)
            gc.collect()  # the previous arm's cached data sets and engines go before the next arm loads its own
    else:
        run_benchmark(args)


if __name__ == "__main__":
    main()
