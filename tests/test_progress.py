"""What a run prints while it works: one line per epoch or case with the time left, and Ctrl-C as one line."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from ignite.engine import Engine, Events
from test_checkpoints import validation

from samsp_monai.progress import CaseProgress, EpochProgress, format_duration
from samsp_monai.training.checkpoints import BestModelSaver

EPOCH_LINE = re.compile(
    r"epoch (\d+)/3, loss (\d\.\d{4}), val_mean_dice (\d\.\d{4}) \(best (\d\.\d{4}) at epoch (\d)\), "
    r"\d+ s/epoch, (about \d+ s left|less than 1 s left|done)"
)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0 s"), (42, "42 s"), (61, "1 min 01 s"), (3599, "59 min 59 s"), (7380, "2 h 03 min")]
)
def test_durations_read_as_a_person_would_say_them(seconds, text):
    assert format_duration(seconds) == text


def trainer_with_validation(scores: list[float]) -> tuple[Engine, Engine]:
    """Real ignite engines: a trainer whose loss is the batch, and a validator that scores as MONAI's evaluator does."""
    validator = Engine(lambda engine, batch: None)
    validator.state.best_metric, validator.state.best_metric_epoch = -1.0, -1

    @validator.on(Events.EPOCH_COMPLETED)
    def score(engine: Engine) -> None:
        value = scores.pop(0)
        engine.state.key_metric_name, engine.state.metrics = "val_mean_dice", {"val_mean_dice": value}
        if value > engine.state.best_metric:
            engine.state.best_metric, engine.state.best_metric_epoch = value, trainer.state.epoch

    trainer = Engine(lambda engine, batch: {"loss": torch.tensor(float(batch))})
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: validator.run([0], max_epochs=1))
    return trainer, validator


def test_training_prints_one_line_per_epoch_with_loss_score_best_and_time_left(capsys):
    trainer, validator = trainer_with_validation([0.5, 0.7, 0.6])
    EpochProgress(validator).attach(trainer)
    trainer.run([1.0, 2.0, 3.0, 4.0], max_epochs=3)  # four iterations per epoch, one line per epoch
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    fields = [EPOCH_LINE.fullmatch(line).groups() for line in lines]
    assert [f[0] for f in fields] == ["1", "2", "3"]
    assert {f[1] for f in fields} == {"2.5000"}  # the epoch's mean loss
    assert [(f[2], f[3], f[4]) for f in fields] == [
        ("0.5000", "0.5000", "1"),
        ("0.7000", "0.7000", "2"),
        ("0.6000", "0.7000", "2"),
    ]
    assert fields[0][5].endswith("left") and fields[2][5] == "done"


def test_inference_prints_one_line_per_case_with_the_time_left(capsys):
    engine = Engine(lambda engine, batch: [{"pred": batch}])
    CaseProgress().attach(engine)
    engine.run([torch.zeros(1)] * 4, max_epochs=1)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["case 1/4 ?", "case 2/4 ?", "case 3/4 ?", "case 4/4 ?"]
    assert lines[0].endswith("left") and lines[-1].endswith(": done")


def test_a_best_model_that_predicts_nothing_ends_with_what_it_means_and_what_to_try(tmp_path, capsys):
    saver = BestModelSaver(tmp_path / "model.pt", torch.nn.Linear(1, 1))
    validation(saver, 1, 0.0)
    report = saver.report()
    assert report.startswith("best validation val_mean_dice: 0.0000 at epoch 1")
    assert "predicts nothing" in report and "--max_epochs" in report and "--ce_weight 1.0" in report
    assert "predicts nothing" not in BestModelSaver(tmp_path / "m.pt", torch.nn.Linear(1, 1)).report()


def test_ctrl_c_during_training_says_which_epoch_is_saved_and_how_to_resume(tmp_path):
    command = [
        *(sys.executable, "-m", "monai.bundle", "run", "training"),
        *("--config_file", "['bundle/configs/train.json','bundle/configs/demo.json']"),
        *("--bundle_root", str(tmp_path), "--image_size", "64", "--slices_per_volume", "2"),
    ]
    run = subprocess.Popen(
        [*command, "--max_epochs", "50"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for line in run.stdout:
        if line.startswith("epoch 2/50"):
            break
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 1
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    message = re.search(r"interrupted after epoch (\d+); rerun the same command to resume", err)
    assert message and int(message.group(1)) in (1, 2, 3), err[-2000:]  # the epoch whose state is on disk

    resumed = subprocess.run([*command, "--max_epochs", "4"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{message.group(1)} of 4 epochs done" in resumed.stdout
