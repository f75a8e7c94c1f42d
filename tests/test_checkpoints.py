"""Checkpoint files: atomic writes, a best model saved only on improvement, one writer in a distributed run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from samsp_monai.atomic import atomic_write, atomic_write_text
from samsp_monai.training.checkpoints import BestModelSaver, TrainingStateSaver, atomic_save


class WriteFailed(Exception):
    pass


def half_then_fail(f) -> None:
    f.write(b"half a checkpoint")
    raise WriteFailed


def test_a_write_that_fails_midway_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "model.pt"
    atomic_save({"model": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    with pytest.raises(WriteFailed):
        atomic_write(path, half_then_fail)
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
        best = torch.load(tmp_path / "model.pt", weights_only=True)
        saved.append((best["epoch"], best["val_mean_dice"], float(best["model"]["weight"][0, 0])))
    assert saved == [(1, 0.3, 1.0), (2, 0.5, 2.0), (2, 0.5, 2.0), (2, 0.5, 2.0), (5, 0.7, 5.0), (5, 0.7, 5.0)]
    assert saver.state_dict().items() >= {"best_metric": 0.7, "best_epoch": 5}.items()
    model = tmp_path / "model.pt"
    assert saver.report() == f"best validation val_mean_dice: 0.7000 at epoch 5 (model: {model})"
    assert capsys.readouterr().out == f"best validation val_mean_dice: 0.7000 at epoch 5 (model: {model})\n"
    saves = [r.getMessage() for r in caplog.records if r.name == "samsp_monai.training.checkpoints"]
    assert len(saves) == 3 and saves[-1] == f"saved best model (val_mean_dice=0.7000, epoch 5) to {model}"


def test_a_restored_tracker_replaces_the_best_model_only_with_a_better_one(tmp_path):
    network = torch.nn.Linear(2, 1)
    first = BestModelSaver(tmp_path / "model.pt", network)
    validation(first, 1, 0.6)
    resumed = BestModelSaver(tmp_path / "model.pt", network)
    resumed.load_state_dict(first.state_dict())
    validation(resumed, 2, 0.5)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["epoch"] == 1
    validation(resumed, 3, 0.65)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["epoch"] == 3
    assert resumed.state_dict().items() >= {"best_metric": 0.65, "best_epoch": 3}.items()


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
import sys, torch, torch.distributed as dist
from ignite.engine import Engine
from samsp_monai.training.checkpoints import BestModelSaver, TrainingStateSaver
rank, folder = int(sys.argv[1]), sys.argv[2]
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
    ranks = [subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(r), str(tmp_path)], env=env) for r in range(2)]
    assert [p.wait(timeout=300) for p in ranks] == [0, 0]
    assert float(torch.load(tmp_path / "model.pt", weights_only=True)["model"]["weight"]) == 0.0
    assert float(torch.load(tmp_path / "state.pt", weights_only=True)["network"]["weight"]) == 0.0
