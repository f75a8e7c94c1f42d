"""CPU inference benchmark: every encoder runtime and precision side by side, on the same cases and threads.

For a trained Kvasir-SEG model (2D images) and a trained MSD hippocampus model (volumes), each setting runs the
bundle's own evaluation (inference.json + evaluate.json [+ image2d.json], the model's recorded settings applied)
in a fresh process with `--threads` threads, one setting after the other (never two at once), and reports:

- encoder slices/s: the image encoder alone on the preprocessed slices of the first cases, batched as inference
  batches them (`sw_batch_size` for volumes, one image in 2D), after a first call that builds or loads the export
  (its seconds are reported as `first call s`);
- seconds per case end to end: the evaluator's whole run (read, preprocess, encode, self-prompted decoder passes,
  invert, write the mask, score it) divided by the cases; start-up (imports, configs, weights) is reported apart;
- peak resident memory of the process;
- mean Dice against the ground truth, and its difference from the reference setting on the same cases: eager fp32
  by default; `--reference "openvino fp32"` on long runs (its masks equal eager's: Δ 0.00 on both data sets in
  benchmarks/cpu, embeddings within 1e-4), where eager would take most of the time.

    python scripts/benchmark_cpu.py --kvasir-model RUN/models/model.pt --hippocampus-model RUN/models/model.pt \
        --kvasir-cases 60 --hippocampus-cases 6 --out benchmarks/cpu

Writes OUT/cpu_benchmark.json and OUT/cpu_benchmark.md (the table, with the CPU model and thread count).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
sys.path.insert(0, str(REPO))

SETTINGS: dict[str, dict[str, str]] = {
    "torch fp32": {"runtime": "torch", "runtime_precision": "fp32"},
    "onnxruntime fp32": {"runtime": "onnxruntime", "runtime_precision": "fp32"},
    "openvino fp32": {"runtime": "openvino", "runtime_precision": "fp32"},
    "openvino bf16": {"runtime": "openvino", "runtime_precision": "bf16"},
}
DATASETS = {
    "kvasir": ("kvasir-seg", "images", ("inference.json", "evaluate.json", "image2d.json")),
    "hippocampus": ("msd-hippocampus", "msd", ("inference.json", "evaluate.json")),
}
ENCODER_CASES = {"kvasir": 8, "hippocampus": 1}  # cases whose slices time the encoder alone


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def write_datalist(dataset: str, data_root: Path, out: Path, cases: int | None) -> Path:
    """The data set's validation split (first `cases`), as the bundle's datalist file."""
    from samsp_monai.data.datalist import build_datalist, write_json_atomic

    folder, layout, _ = DATASETS[dataset]
    validation = build_datalist(layout, data_root / folder)["validation"][:cases]
    path = out / f"datalist-{dataset}.json"
    write_json_atomic({"training": [], "validation": validation}, path)
    return path


def job_config(job: Mapping[str, Any]) -> Path:
    """The bundle's evaluation configs with the model's recorded network and pixel settings and this setting."""
    from samsp_monai.model_file import load_model
    from samsp_monai.serving.serving_bundle import apply_network_args, apply_recorded_settings, merged_config

    model = load_model(job["model"])
    overrides = {
        "bundle_root": str(Path(job["model"]).parents[1]),
        "ckpt_path": job["model"],
        "dataset_dir": job["dataset_dir"],
        "datalist_file": job["datalist_file"],
        "output_dir": job["output_dir"],
        "overwrite": True,
        "num_overlays": 0,
        "num_workers": 0,
        "tracking_uri": f"sqlite:///{job['output_dir']}/mlruns.db",
        **SETTINGS[job["setting"]],
    }
    config = merged_config([CONFIGS / name for name in DATASETS[job["dataset"]][2]], overrides)
    apply_recorded_settings(config, model.settings or {})
    apply_network_args(config, model.network_args or {})
    path = Path(job["output_dir"]) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1))
    return path


def encoder_inputs(parser: Any, network: Any, cases: int, volumes: bool) -> list[Any]:
    """Preprocessed encoder inputs of the first `cases` cases, in the batches inference runs them in."""
    import torch

    batch = int(parser.get_parsed_content("sw_batch_size")) if volumes else 1
    axis = int(parser.get_parsed_content("slice_axis")) if volumes else 0
    dataset = parser.get_parsed_content("dataset")
    images = []
    for i in range(min(cases, len(dataset))):
        image = torch.as_tensor(dataset[i]["image"]).as_subclass(torch.Tensor).float()
        images.append(network.preprocess(image.movedim(axis + 1, 0) if volumes else image[None]))
    return list(torch.cat(images).split(batch))


def content_free_slices(parser: Any) -> tuple[int, int]:
    """(slices with a single intensity, all slices) of the evaluated volumes: what skipping slices outside the
    body could save at most (a slice with any content could hold the target, so only these may be skipped)."""
    import torch

    axis = int(parser.get_parsed_content("slice_axis"))
    dataset = parser.get_parsed_content("dataset")
    free = total = 0
    for i in range(len(dataset)):
        slices = torch.as_tensor(dataset[i]["image"]).movedim(axis + 1, 0).flatten(1)
        free += int((slices.amax(1) == slices.amin(1)).sum())
        total += len(slices)
    return free, total


def run_worker(job: Mapping[str, Any]) -> dict[str, Any]:
    """One setting on one data set, in this process (the parent starts one process per setting)."""
    import torch
    from monai.bundle import ConfigWorkflow

    from samsp_monai.model_file import load_model
    from samsp_monai.serving.serving_bundle import segments_volumes

    started = time.perf_counter()
    torch.set_num_threads(job["threads"])
    config, meta = str(job_config(job)), str(CONFIGS / "metadata.json")
    wf = ConfigWorkflow(config_file=config, meta_file=meta, workflow_type=None, logging_file=False)
    wf.initialize()
    network = wf.parser.get_parsed_content("network").eval()
    network.load_state_dict(load_model(job["model"]).state_dict)
    volumes = segments_volumes(wf.parser.config)
    batches = encoder_inputs(wf.parser, network, ENCODER_CASES[job["dataset"]], volumes)
    with torch.no_grad():
        first = time.perf_counter()
        network.encode(batches[0][:1])
        first_call = time.perf_counter() - first
        start = time.perf_counter()
        slices = sum(len(network.encode(x)) for x in batches)
        encoder_s = time.perf_counter() - start
    cases = len(wf.parser.get_parsed_content("datalist"))
    startup = time.perf_counter() - started
    start = time.perf_counter()
    wf.run()
    end_to_end = time.perf_counter() - start
    wf.finalize()
    summary = json.loads((Path(job["output_dir"]) / "metrics_summary.json").read_text())
    free = content_free_slices(wf.parser) if volumes and job["reference"] else None
    return {
        "content_free_slices": free,
        "setting": job["setting"],
        "dataset": job["dataset"],
        "cases": cases,
        "encoder_slices_per_s": slices / encoder_s,
        "first_call_s": first_call,
        "s_per_case": end_to_end / cases,
        "startup_s": startup,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "dice": mean_dice(summary),
    }


def mean_dice(summary: Mapping[str, Any]) -> float:
    """Mean Dice over the foreground classes of evaluate.json's metrics_summary.json."""
    return float(summary["overall"]["dice"])


def run_setting(job: Mapping[str, Any], log: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]), "PYTHONPATH": str(REPO)}
    with open(log, "a") as f:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(dict(job))], stdout=subprocess.PIPE, stderr=f, env=env
        )
    if done.returncode:
        raise SystemExit(f"{job['dataset']} / {job['setting']} failed; see {log}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def table(results: Sequence[Mapping[str, Any]], threads: int, reference: str) -> str:
    lines = [
        f"CPU: {cpu_model()}, {threads} threads; torch {torch_version()}",
        "",
        f"| data | setting | encoder slices/s | x {reference} | first call s | s/case end to end | start-up s "
        f"| peak RSS MB | Dice % | Δ Dice vs {reference} (points) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ref = next(e for e in results if e["dataset"] == r["dataset"] and e["setting"] == reference)
        lines.append(
            f"| {r['dataset']} ({r['cases']} cases) | {r['setting']} | {r['encoder_slices_per_s']:.2f} "
            f"| {r['encoder_slices_per_s'] / ref['encoder_slices_per_s']:.2f} | {r['first_call_s']:.1f} "
            f"| {r['s_per_case']:.2f} | {r['startup_s']:.1f} | {r['peak_rss_mb']:.0f} | {100 * r['dice']:.2f} "
            f"| {100 * (r['dice'] - ref['dice']):+.2f} |"
        )
    return "\n".join(lines) + "\n"


def torch_version() -> str:
    import torch

    return torch.__version__


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kvasir-model", help="trained Kvasir-SEG model.pt (with its model.json)")
    parser.add_argument("--hippocampus-model", help="trained MSD hippocampus model.pt (with its model.json)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument(
        "--reference",
        default="torch fp32",
        choices=list(SETTINGS),
        help="the setting others are compared with, run first (default: eager fp32)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads per setting (default: all)")
    for dataset in DATASETS:
        parser.add_argument(f"--{dataset}-cases", type=int, help=f"first N {dataset} validation cases (default: all)")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", help="folder for the table, the logs and each setting's masks (required)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    if not args.out:
        raise SystemExit("--out is required")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    models = {"kvasir": args.kvasir_model, "hippocampus": args.hippocampus_model}
    settings = [args.reference, *(s for s in args.settings if s != args.reference)]  # the reference first
    results = []
    for dataset, model in models.items():
        if not model:
            continue
        cases = getattr(args, f"{dataset}_cases")
        datalist = write_datalist(dataset, Path(args.data_root), out, cases)
        for setting in settings:
            job = {
                "dataset": dataset,
                "setting": setting,
                "model": str(Path(model).resolve()),
                "dataset_dir": str(Path(args.data_root) / DATASETS[dataset][0]),
                "datalist_file": str(datalist),
                "output_dir": str(out / dataset / setting.replace(" ", "_")),
                "threads": args.threads,
                "reference": setting == args.reference,
            }
            results.append(run_setting(job, out / "log.txt"))
            r = results[-1]
            print(
                f"{dataset} / {setting}: {r['encoder_slices_per_s']:.2f} slices/s, {r['s_per_case']:.2f} s/case, "
                f"Dice {100 * r['dice']:.2f} %, peak {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    (out / "cpu_benchmark.json").write_text(
        json.dumps(
            {"cpu": cpu_model(), "threads": args.threads, "reference": args.reference, "results": results}, indent=2
        )
    )
    report = table(results, args.threads, args.reference)
    for r in results:
        if r["content_free_slices"]:
            free, total = r["content_free_slices"]
            report += f"\n{r['dataset']}: {free} of {total} slices hold a single intensity (what skipping could save)\n"
    (out / "cpu_benchmark.md").write_text(report)
    print(report)
    print(f"wrote {out / 'cpu_benchmark.md'} and {out / 'cpu_benchmark.json'}")


if __name__ == "__main__":
    main()
