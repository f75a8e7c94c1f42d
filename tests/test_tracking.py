"""MLflow tracking pieces on a real local SQLite store: what the run holds, and nothing without tracking."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO
from ignite.engine import Engine, Events
from mlflow import MlflowClient
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.handlers import MLFlowHandler
from monai.utils import path_to_sqlite_uri

from samsp_monai import SAMSPLoss, SAMSPOutput
from samsp_monai.evaluation.run_comparison import (
    comparison_table,
    differing_params,
    find_runs,
    plot_metric_history,
    to_markdown,
)
from samsp_monai.training.checkpoints import BestModelSaver
from samsp_monai.training.tracking import (
    MLflowRunDetails,
    code_revision,
    file_digest,
    find_mlflow_handler,
    unique_run_name,
)

BUNDLE_VERSION = json.loads((REPO / "bundle/configs/metadata.json").read_text())["version"]
CONFIGS = [str(REPO / "bundle" / "configs" / name) for name in ("train.json", "demo.json")]


def sqlite_uri(folder: Path) -> str:
    return path_to_sqlite_uri(str(folder / "mlruns.db"))


def train_like_engine(loss: SAMSPLoss, self_prompt: bool) -> Engine:
    """An engine whose step computes the real SAM-SP loss on random logits, so `loss.last_terms` changes each step."""

    def step(engine: Engine, batch: int) -> dict[str, torch.Tensor]:
        final, first = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
        target = torch.randint(0, 3, (2, 1, 8, 8))
        return {"loss": loss(SAMSPOutput(final, first) if self_prompt else final, target)}

    return Engine(step)


def attach_mlflow(engine: Engine, uri: str, run_name: str) -> MLFlowHandler:
    """The trainer handler as `--tracking mlflow` configures it, attached after everything else."""
    handler = MLFlowHandler(
        tracking_uri=uri,
        experiment_name="samsp_test",
        run_name=run_name,
        tag_name="train_loss",
        output_transform=lambda output: output["loss"],
        close_on_complete=True,
    )
    handler.attach(engine)
    return handler


def run_training(tmp_path: Path, run_name: str, self_prompt: bool, **params: object) -> list[dict[str, float]]:
    """Two epochs of three iterations with `MLflowRunDetails` and an MLFlowHandler; returns the terms per step."""
    loss = SAMSPLoss(ce_weight=0.5)
    engine = train_like_engine(loss, self_prompt)
    best = BestModelSaver(tmp_path / run_name / "model.pt", torch.nn.Linear(1, 1), metric_name="val_mean_dice")
    best.load_state_dict({"best_metric": 0.75, "best_epoch": 2})
    report = tmp_path / run_name / "report"
    (report / "overlays").mkdir(parents=True)
    (report / "metrics.csv").write_text("case,dice\na,0.75\n")
    (report / "overlays" / "a.png").write_bytes(b"png")
    details = MLflowRunDetails(
        params={"self_prompt": self_prompt, "lora_targets": ["qkv"], **params},
        tags={"workflow": "training", "bundle_version": "0.1.0"},
        loss=loss,
        best_model=best,
        artifacts=[report / "metrics.csv", report / "overlays", report / "missing.json"],
    )
    details.attach(engine)
    attach_mlflow(engine, sqlite_uri(tmp_path), run_name)
    seen: list[dict[str, float]] = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(loss.last_terms)))
    engine.run(range(3), max_epochs=2)
    return seen


def get_run(client: MlflowClient, run_name: str):
    (run,) = client.search_runs(
        [client.get_experiment_by_name("samsp_test").experiment_id], f"attributes.run_name = '{run_name}'"
    )
    return run


def test_run_holds_params_tags_loss_terms_best_model_and_artifacts(tmp_path: Path) -> None:
    seen = run_training(tmp_path, "sp_on", self_prompt=True, lora_rank=4)
    client = MlflowClient(sqlite_uri(tmp_path))
    run = get_run(client, "sp_on")
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["self_prompt"] == "True" and params["lora_targets"] == "['qkv']" and params["lora_rank"] == "4"
    assert params["loss_terms"] == "dice+ce+kl"
    assert params["max_epochs"] == "2"  # from MLFlowHandler itself, in the same run
    tags = run.data.tags
    assert tags["workflow"] == "training" and tags["bundle_version"] == "0.1.0"
    assert tags["best_model_path"] == str(tmp_path / "sp_on" / "model.pt")
    assert run.data.metrics["best_val_mean_dice"] == 0.75 and run.data.metrics["best_epoch"] == 2
    for term in ("dice", "ce", "kl"):
        history = sorted(client.get_metric_history(run.info.run_id, f"train_loss_{term}"), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]
        assert [m.value for m in history] == pytest.approx([terms[term] for terms in seen])
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 6
    assert len(client.get_metric_history(run.info.run_id, "lr_group_0")) == 0  # no optimizer on this engine
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert logged == {"metrics.csv", "overlays"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "overlays")] == ["overlays/a.png"]


def test_nothing_is_logged_without_an_mlflow_handler(tmp_path: Path) -> None:
    """Tracking off, or a non-zero rank (where `_disabled_` drops the MLFlowHandler): no store, no error."""
    loss = SAMSPLoss()
    engine = train_like_engine(loss, self_prompt=True)
    details = MLflowRunDetails(params={"a": 1}, tags={"b": 2}, loss=loss, artifacts=[tmp_path])
    details.attach(engine)
    engine.run(range(2), max_epochs=1)
    assert find_mlflow_handler(engine) is None and details.run_id is None
    assert list(tmp_path.iterdir()) == []


def test_run_comparison_table_and_plot(tmp_path: Path) -> None:
    run_training(tmp_path, "sp_on", self_prompt=True, lora_rank=4)
    run_training(tmp_path, "sp_off", self_prompt=False, lora_rank=4)
    client = MlflowClient(sqlite_uri(tmp_path))
    start = 1_700_000_000_000
    # epoch 2 of sp_on validated twice: before a crash (0.95), and again after the resume (0.6); the later counts
    client.log_metric(get_run(client, "sp_on").info.run_id, "val_mean_dice", 0.95, timestamp=start, step=2)
    for name, dice in (("sp_on", [0.2, 0.6, 0.5]), ("sp_off", [0.1, 0.3, 0.4])):
        run_id = get_run(client, name).info.run_id
        for epoch, value in enumerate(dice, start=1):
            client.log_metric(run_id, "val_mean_dice", value, timestamp=start + 1000 * epoch, step=epoch)
    runs = find_runs(client, "samsp_test")
    assert [r.info.run_name for r in runs] == ["sp_on", "sp_off"]
    assert differing_params(runs) == ["loss_terms", "self_prompt"]
    table = comparison_table(client, runs).set_index("run_name")
    assert table.loc["sp_on", "best val_mean_dice"] == 0.6 and table.loc["sp_on", "best epoch"] == 2
    assert table.loc["sp_on", "final val_mean_dice"] == 0.5 and table.loc["sp_off", "best epoch"] == 3
    assert table.loc["sp_off", "self_prompt"] == "False" and pd.isna(table.loc["sp_off", "final train_loss_kl"])
    assert "best_epoch" not in table.columns and "final best_val_mean_dice" not in table.columns
    markdown = to_markdown(table.reset_index()).splitlines()
    assert len(markdown) == 4 and markdown[2].startswith("| sp_on |") and "| 0.6 | 2 | 0.5 |" in markdown[2]
    assert find_runs(client, "samsp_test", "params.self_prompt = 'False'")[0].info.run_name == "sp_off"
    png = plot_metric_history(client, runs, "val_mean_dice", tmp_path / "plot.png", label_params=["self_prompt"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no experiment 'nope'"):
        find_runs(client, "nope")


def test_helpers(tmp_path: Path) -> None:
    assert re.fullmatch(r"samsp-\d{8}-\d{6}-[0-9a-f]{4}", unique_run_name())
    assert unique_run_name("x") != unique_run_name("x")
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", code_revision(REPO))
    assert code_revision(tmp_path) == "unknown"
    (tmp_path / "datalist.json").write_text(json.dumps({"training": []}))
    expected = hashlib.sha256((tmp_path / "datalist.json").read_bytes()).hexdigest()[:12]
    assert file_digest(tmp_path / "datalist.json") == expected


def test_bundle_tracking_config(tmp_path: Path) -> None:
    """`--tracking mlflow` keeps the bundle's defaults and appends its handler after `MLflowRunDetails`."""
    workflow = ConfigWorkflow(config_file=CONFIGS, tracking="mlflow", bundle_root=str(tmp_path), logging_file=False)
    parser = workflow.parser
    assert [h["_target_"] for h in parser["train#handlers"][-2:]] == [
        "samsp_monai.training.tracking.MLflowRunDetails",
        "MLFlowHandler",
    ]
    assert parser["validate#handlers"][-1]["_target_"] == "MLFlowHandler"
    assert parser.get_parsed_content("tracking_uri") == sqlite_uri(tmp_path / "eval")
    assert parser.get_parsed_content("experiment_name") == "samsp"
    assert parser.get_parsed_content("run_name").startswith("samsp-")
    assert parser.get_parsed_content("is_not_rank0") is False
    # the demo data: one copy for the bundle, not one per bundle_root, so runs on it name the same dataset_dir
    assert parser.get_parsed_content("demo_data_dir") == str(REPO / "bundle" / "demo_data")
    tags = parser.get_parsed_content("tracking_tags")
    assert tags["bundle_version"] == BUNDLE_VERSION and tags["workflow"] == "training"
    assert tags["code_revision"] != "unknown"
    override = ConfigWorkflow(
        config_file=CONFIGS,
        tracking="mlflow",
        bundle_root=str(tmp_path),
        logging_file=False,
        tracking_uri="http://127.0.0.1:5000",
    )
    assert override.parser.get_parsed_content("tracking_uri") == "http://127.0.0.1:5000"


@pytest.mark.slow
def test_is_not_rank0_on_every_rank(tmp_path: Path) -> None:
    """The bundle's `is_not_rank0`, which disables all MLflow handlers, is true exactly on non-zero ranks.
    Slow only because each of the two spawned ranks imports torch and MONAI (about 10 s on 2 cores)."""
    torch.multiprocessing.spawn(rank_flag, args=(2, str(tmp_path)), nprocs=2)
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)] == [False, True]


def rank_flag(rank: int, world_size: int, folder: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world_size)
    try:
        parser = ConfigParser()
        parser.read_config(CONFIGS[0])
        Path(folder, f"rank{rank}.json").write_text(json.dumps(parser.get_parsed_content("is_not_rank0")))
    finally:
        torch.distributed.destroy_process_group()
