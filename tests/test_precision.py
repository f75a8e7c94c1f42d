"""Mixed precision: the `amp` key, a clean no-op on CPU, bf16 numerics, and the scaler rule."""

import warnings

import pytest
import torch
from conftest import REPO, small_samsp
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer

from samsp_monai import SAMSPError, SAMSPLoss
from samsp_monai.training.precision import DropScalerForBF16, amp_enabled, amp_kwargs


def _batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [
        {"image": torch.rand(2, 1, 64, 64, generator=g), "label": torch.randint(0, 2, (2, 1, 64, 64), generator=g)}
        for _ in range(n)
    ]


def _train(amp: bool, dtype: torch.dtype | None = None, handlers=()) -> SupervisedTrainer:
    torch.manual_seed(0)
    net = small_samsp(encoder_training="full")
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_batches(),
        network=net,
        optimizer=torch.optim.AdamW(net.parameters(), lr=1e-3),
        loss_function=SAMSPLoss(),
        amp=amp,
        amp_kwargs={"dtype": dtype} if dtype else amp_kwargs("cpu"),
        train_handlers=list(handlers),
    )
    trainer.run()
    return trainer


def test_amp_key_must_be_a_real_bool():
    with pytest.raises(SAMSPError, match="'amp' must be True or False.*'false'"):
        amp_enabled("false", "cpu")
    assert amp_enabled(True, "cuda") is True and amp_enabled(False, "cuda") is False


def test_bundle_amp_override_is_validated_and_off_on_cpu():
    parser = ConfigParser()
    parser.read_config([REPO / "bundle/configs/train.json"])
    parser["device"] = "$torch.device('cpu')"
    parser["amp"] = True
    assert parser.get_parsed_content("amp_enabled") is False
    parser["amp"] = "false"
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("amp_enabled", lazy=False)
    chain = [err.value, err.value.__cause__, err.value.__context__]
    assert any(isinstance(e, SAMSPError) for e in chain)


def test_amp_on_cpu_is_a_clean_no_op():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "CUDA is not available" autocast/GradScaler warnings either
        with_amp = _train(amp_enabled(True, "cpu"))
    without = _train(False)
    assert with_amp.amp is False and with_amp.scaler is None
    for (name, a), b in zip(with_amp.network.state_dict().items(), without.network.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_bf16_forward_stays_float32_and_close_to_fp32():
    net = small_samsp(num_classes=2).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        full = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = net(x)
    assert half.dtype == torch.float32 and half.shape == full.shape
    torch.testing.assert_close(half.softmax(1), full.softmax(1), rtol=0, atol=0.05)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_gradient_scaler_is_dropped_only_for_bf16(dtype):
    created = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's CUDA-only autocast and scaler warn on this CPU machine
        trainer = _train(True, dtype, handlers=[_Capture(created), DropScalerForBF16()])
    if dtype == torch.bfloat16:
        assert trainer.scaler is not created["scaler"] and not trainer.scaler.is_enabled()
    else:
        assert trainer.scaler is created["scaler"]


class _Capture:
    """Records the scaler MONAI's trainer created, before DropScalerForBF16 runs."""

    def __init__(self, store: dict) -> None:
        self.store = store

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.store.update(scaler=e.scaler))
