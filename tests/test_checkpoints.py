"""Checkpoint files: atomic writes, a best model saved only on improvement, one writer in a distributed run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from conftest import small_samsp
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.engines import SupervisedEvaluator

from samsp_monai.atomic import FileWriteError, atomic_write, atomic_write_text, remove_stale_temp_files
from samsp_monai.model_file import file_sha256, sidecar_path
from samsp_monai.training.checkpoints import BestModelSaver, TrainingStateSaver, atomic_save


def recorded(model_path) -> dict:
    """The model.json written beside `model_path`."""
    return json.loads(sidecar_path(model_path).read_text())


class WriteFailed(Exception):
    pass


def half_then_fail(f) -> None:
    f.write(b"half a checkpoint")
    raise WriteFailed


def test_a_write_that_fails_midway_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "model.pt"
    atomic_save({"model": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    with pytest.raises(FileWriteError, match="the previous model.pt, if any, is unchanged") as raised:
        atomic_write(path, half_then_fail)
    assert isinstance(raised.value.__cause__, WriteFailed)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.ones(3))


def test_a_checkpoint_whose_pickling_fails_midway_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "training_state.pt"
    atomic_save({"epoch": 1}, path)
    with pytest.raises(Exception, match="lambda"):  # the tensor is written before the lambda fails to pickle
        atomic_save({"network": {"w": torch.ones(10_000)}, "hook": lambda: None}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_state.pt"]


def test_the_temporary_file_lies_beside_the_target_under_a_recognisable_name(tmp_path):
    """Beside it, so the final rename stays on one file system; named .<name>.*.tmp, so leftovers are findable."""
    path = tmp_path / "models" / "model.pt"
    seen = []
    atomic_write(path, lambda f: seen.extend(path.parent.iterdir()))
    (tmp,) = seen
    assert tmp.parent == path.parent and tmp.name.startswith(".model.pt.") and tmp.name.endswith(".tmp")
    assert not tmp.exists() and path.is_file()


def test_a_completed_write_replaces_the_file_readable_by_others(tmp_path):
    path = tmp_path / "new" / "sub" / "summary.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]
    assert path.stat().st_mode & 0o777 == 0o644


def messages(caplog: pytest.LogCaptureFixture, logged_by: object) -> list[str]:
    """The log messages of the module that defines `logged_by` (other libraries' loggers may log too)."""
    return [r.getMessage() for r in caplog.records if r.name == logged_by.__module__]


def test_only_temporary_files_of_an_interrupted_write_are_removed(tmp_path, caplog):
    """`.<name>.<8 characters>.tmp` files go, with a warning naming each; look-alikes and the rest stay."""
    caplog.set_level(logging.WARNING, logger=remove_stale_temp_files.__module__)
    stale = [tmp_path / ".model.pt.a1B2c3_4.tmp", tmp_path / ".training_state.pt.zzzzzzzz.tmp"]
    kept = [tmp_path / "model.pt", tmp_path / ".notes.tmp", tmp_path / ".model.pt.short.tmp"]
    for path in stale + kept:
        path.write_bytes(b"x")
    (tmp_path / ".folder.abcdefgh.tmp").mkdir()
    assert remove_stale_temp_files(tmp_path) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in kept] + [".folder.abcdefgh.tmp"])
    assert messages(caplog, remove_stale_temp_files) == [
        f"removed {path}, left by an interrupted checkpoint write" for path in sorted(stale)
    ]
    assert remove_stale_temp_files(tmp_path / "absent") == []


def validation(saver: BestModelSaver, epoch: int, value: float) -> None:
    """A real ignite run standing for the evaluator's validation of epoch `epoch`, with the saver attached."""
    engine = Engine(lambda engine, batch: None)
    saver.attach(engine)

    @engine.on(Events.EPOCH_COMPLETED)
    def score(engine: Engine) -> None:  # as SupervisedEvaluator leaves its state before COMPLETED
        engine.state.epoch, engine.state.metrics = epoch, {"val_mean_dice": value}
        engine.state.key_metric_name = "val_mean_dice"

    engine.run([0], max_epochs=1)


def test_best_model_is_saved_only_when_the_metric_improves(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO, logger="samsp_monai.training.checkpoints")
    network = torch.nn.Linear(2, 1)
    saver = BestModelSaver(tmp_path / "model.pt", network)
    saved = []
    for epoch, value in enumerate([0.3, 0.5, 0.4, 0.5, 0.7, 0.2], start=1):
        with torch.no_grad():
            network.weight.fill_(epoch)  # tells which epoch's weights the file holds
        validation(saver, epoch, value)
        best, record = torch.load(tmp_path / "model.pt", weights_only=True), recorded(tmp_path / "model.pt")
        saved.append((record["epoch"], record["metric_value"], float(best["weight"][0, 0])))
        assert record["metric_name"] == "val_mean_dice" and record["model_sha256"] == file_sha256(tmp_path / "model.pt")
    assert saved == [(1, 0.3, 1.0), (2, 0.5, 2.0), (2, 0.5, 2.0), (2, 0.5, 2.0), (5, 0.7, 5.0), (5, 0.7, 5.0)]
    assert saver.state_dict().items() >= {"best_metric": 0.7, "best_epoch": 5}.items()
    model = tmp_path / "model.pt"
    assert saver.report() == f"best validation val_mean_dice: 0.7000 at epoch 5 (model: {model})"
    assert capsys.readouterr().out == f"best validation val_mean_dice: 0.7000 at epoch 5 (model: {model})\n"
    saves = [r.getMessage() for r in caplog.records if r.name == "samsp_monai.training.checkpoints"]
    assert len(saves) == 3 and saves[-1] == f"saved best model (val_mean_dice=0.7000, epoch 5) to {model}"


def restored_tracker(tmp_path, network: torch.nn.Module, epoch: int, metric: float) -> BestModelSaver:
    """A tracker restored from one that validated `metric` at `epoch`, as a resumed run holds it."""
    first = BestModelSaver(tmp_path / "model.pt", network)
    validation(first, epoch, metric)
    resumed = BestModelSaver(tmp_path / "model.pt", network)
    resumed.load_state_dict(first.state_dict())
    return resumed


def test_a_restored_tracker_replaces_the_best_model_only_with_a_better_one(tmp_path):
    resumed = restored_tracker(tmp_path, torch.nn.Linear(2, 1), 1, 0.6)
    validation(resumed, 2, 0.5)
    assert recorded(tmp_path / "model.pt")["epoch"] == 1
    validation(resumed, 3, 0.65)
    assert recorded(tmp_path / "model.pt")["epoch"] == 3
    assert resumed.state_dict().items() >= {"best_metric": 0.65, "best_epoch": 3}.items()


def training(saver: BestModelSaver, val_cases: int, max_epochs: int = 2) -> None:
    """A real ignite run standing for the trainer, with the saver attached to it (no evaluator runs)."""
    trainer = Engine(lambda engine, batch: None)
    saver.attach_trainer(trainer, val_cases)
    trainer.run([0], max_epochs=max_epochs)


def test_a_datalist_without_validation_cases_is_announced_up_front_and_only_then(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=BestModelSaver.__module__)
    path = tmp_path / "model.pt"
    training(BestModelSaver(path, torch.nn.Linear(2, 1)), val_cases=3)
    assert messages(caplog, BestModelSaver) == []
    training(BestModelSaver(path, torch.nn.Linear(2, 1)), val_cases=0)
    [warning] = messages(caplog, BestModelSaver)
    assert warning.startswith("the datalist has no validation cases: no best model can be chosen")
    assert f"will be saved to {path} (add a 'validation' list" in warning


def test_a_validation_that_was_never_finite_writes_no_model_and_says_so(tmp_path, caplog, capsys):
    """Validation ran (metric NaN each time): the end of training must not fall back to the unvalidated save."""
    caplog.set_level(logging.WARNING, logger=BestModelSaver.__module__)
    path = tmp_path / "model.pt"
    saver = BestModelSaver(path, torch.nn.Linear(2, 1))
    validation(saver, 1, float("nan"))
    training(saver, val_cases=2)
    assert not path.exists()
    assert saver.report() == f"no model written to {path}: validation val_mean_dice was never finite"
    assert capsys.readouterr().out.endswith("was never finite\n")
    assert messages(caplog, BestModelSaver) == [
        "validation val_mean_dice=nan at epoch 1, or non-finite weights: model not saved"
    ]


def test_a_network_with_non_finite_weights_is_not_saved_even_without_validation(tmp_path):
    network = torch.nn.Linear(2, 1)
    with torch.no_grad():
        network.bias.fill_(float("inf"))
    saver = BestModelSaver(tmp_path / "model.pt", network)
    training(saver, val_cases=0)
    assert not (tmp_path / "model.pt").exists()
    assert saver.report() == f"no model written to {tmp_path / 'model.pt'}: validation metric was never finite"


def test_a_resumed_run_without_validation_keeps_the_best_model_it_restored(tmp_path):
    """The restored tracker's best is the served model's own score (epoch 0): no unvalidated save replaces it."""
    path = tmp_path / "model.pt"
    atomic_save({"weight": torch.zeros(1, 2)}, path)
    before = path.read_bytes()
    saver = BestModelSaver(path, torch.nn.Linear(2, 1))
    saver.load_state_dict({"best_metric": 0.7, "best_epoch": 0, "metric_name": "val_mean_dice"})
    training(saver, val_cases=0)
    assert path.read_bytes() == before
    assert saver.report() == f"best validation val_mean_dice: 0.7000 at epoch 0 (model: {path})"


class Evaluator(Engine):
    """Runs over its own data like MONAI's evaluators: `run()` without arguments (as `score_baseline` calls it)."""

    def run(self) -> None:
        super().run([0], max_epochs=1)


def test_a_baseline_that_no_epoch_beats_is_reported_as_epoch_0_and_nothing_is_written(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=BestModelSaver.__module__)
    path = tmp_path / "model.pt"
    network = torch.nn.Linear(2, 1)
    saver = BestModelSaver(path, network)
    evaluator = Evaluator(lambda engine, batch: None)
    saver.attach(evaluator)
    scores = iter([0.6, 0.5])

    @evaluator.on(Events.EPOCH_COMPLETED)
    def score(engine: Engine) -> None:
        engine.state.metrics, engine.state.key_metric_name = {"val_mean_dice": next(scores)}, "val_mean_dice"

    trainer = Engine(lambda engine, batch: None)
    saver.attach_baseline(trainer, evaluator)
    saver.attach_trainer(trainer, val_cases=1)

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine: Engine) -> None:
        evaluator.run()

    trainer.run([0], max_epochs=1)
    assert not path.exists()
    assert saver.report() == f"best validation val_mean_dice: 0.6000 at epoch 0 (model: {path})"
    assert messages(caplog, BestModelSaver) == [
        f"model before training: val_mean_dice=0.6000; only a better one replaces {path}"
    ]


def test_a_resumed_tracker_reports_the_metric_name_it_restored(tmp_path):
    resumed = restored_tracker(tmp_path, torch.nn.Linear(2, 1), 3, 0.5)
    assert resumed.report() == f"best validation val_mean_dice: 0.5000 at epoch 3 (model: {tmp_path / 'model.pt'})"


def test_a_wrapped_network_saves_the_arguments_that_rebuild_it(tmp_path):
    """DistributedDataParallel/DataParallel hold the network as `.module`; its `network_args` still go in, and the
    weights keep the network's own names (no `module.` prefix), so the file loads into an unwrapped network."""
    network = small_samsp(num_classes=2)
    saver = BestModelSaver(tmp_path / "model.pt", torch.nn.DataParallel(network))
    validation(saver, 1, 0.5)
    args = recorded(tmp_path / "model.pt")["network_args"]
    assert args["num_classes"] == 2 and args["variant"] == "vit_test" and args["img_size"] == 64
    small_samsp(num_classes=2).load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)


def test_training_state_holds_every_object_after_each_epoch(tmp_path):
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
    saver = TrainingStateSaver(tmp_path / "state.pt", {"network": network, "optimizer": optimizer})
    trainer = Engine(lambda engine, batch: (network(torch.ones(1, 2)).sum().backward(), optimizer.step()))
    saver.attach(trainer)
    epochs = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs.append(torch.load(tmp_path / "state.pt")))
    trainer.run([0, 1], max_epochs=2)
    assert len(epochs) == 2 and not torch.equal(epochs[0]["network"]["weight"], epochs[1]["network"]["weight"])
    torch.testing.assert_close(epochs[1]["network"]["weight"], network.weight.detach())
    assert epochs[1]["optimizer"]["state"][0]["momentum_buffer"].shape == (1, 2)


def test_rank_0_of_a_process_group_writes(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        validation(BestModelSaver(tmp_path / "model.pt", torch.nn.Linear(1, 1)), 1, 0.5)
    finally:
        dist.destroy_process_group()
    assert (tmp_path / "model.pt").is_file()


WRITER_SCRIPT = """
import logging, sys, torch, torch.distributed as dist
from ignite.engine import Engine
from samsp_monai.training.checkpoints import BestModelSaver, TrainingStateSaver
rank, folder = int(sys.argv[1]), sys.argv[2]
logging.basicConfig(level=logging.INFO, format="%(message)s")
dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
network = torch.nn.Linear(1, 1)
with torch.no_grad():
    network.weight.fill_(rank)  # the file tells which rank wrote it
engine = Engine(lambda e, b: None)
engine.state.epoch, engine.state.metrics, engine.state.key_metric_name = 1, {"dice": 0.5}, "dice"
for turn in range(2):  # rank 0 writes first, then rank 1: a second writer would leave its weights behind
    if turn == rank:
        BestModelSaver(f"{folder}/model.pt", network)(engine)
        TrainingStateSaver(f"{folder}/state.pt", {"network": network})(engine)
    dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_only_rank_0_writes_in_a_two_process_run(tmp_path):
    """Slow only because each rank imports torch and ignite (tens of seconds on a busy 2-core machine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ranks = [
        subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(r), str(tmp_path)], env=env, stderr=subprocess.PIPE)
        for r in range(2)
    ]
    logs = [p.communicate(timeout=300)[1].decode() for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], logs
    assert [log.count("saved best model") for log in logs] == [1, 0]  # only the writing rank says it saved
    assert float(torch.load(tmp_path / "model.pt", weights_only=True)["weight"]) == 0.0
    assert float(torch.load(tmp_path / "state.pt", weights_only=True)["network"]["weight"]) == 0.0


class FixedScore(Metric):
    """An ignite metric that reports a given score, standing for the validation Dice."""

    def __init__(self, score: float) -> None:
        self.score = score
        super().__init__()

    def reset(self) -> None:
        pass

    def update(self, output) -> None:
        pass

    def compute(self) -> float:
        return self.score


def test_the_evaluators_best_after_a_resume_is_the_runs_best_not_the_best_since_the_resume(tmp_path):
    """MONAI's evaluator keeps its own best per process; the console's "best ... at epoch" reads it."""
    network = torch.nn.Linear(2, 1)
    resumed = restored_tracker(tmp_path, network, 1, 0.6)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=[{"image": torch.zeros(1, 2)}],
        epoch_length=1,
        network=network,
        key_val_metric={"val_mean_dice": FixedScore(0.5)},
    )
    resumed.attach(evaluator)
    evaluator.run(global_epoch=2)
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (0.6, 1)
    assert recorded(tmp_path / "model.pt")["epoch"] == 1
