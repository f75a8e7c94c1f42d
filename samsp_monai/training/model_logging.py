"""The trained model as an MLflow model: MLflow's PyTorch flavour, loadable with `mlflow.pytorch.load_model` (or
as a pyfunc) and registrable in the model registry.

What is logged is the best model (`models/model.pt`), not the network of the last epoch: the network is copied to
the CPU and given the weights of `model.pt`. The model folder also holds `model.pt` itself (and its sidecar
`model.json`, when there is one) under `extra_files/`, so the bundle's own tools can use the logged files, and this
package's code under `code/`, so that loading needs only the packages listed in its requirements.
"""

from __future__ import annotations

import copy
import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from mlflow.types import Schema, TensorSpec

from ..model_file import load_model
from .checkpoints import network_args

logger = logging.getLogger(__name__)

CODE_DIR = Path(__file__).resolve().parents[1]
REQUIREMENTS = ("torch", "monai", "segment-anything", "peft", "numpy")


def model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in `path` (a plain model.pt, checked against its model.json, or an old nested file)."""
    return load_model(path).state_dict


def model_files(model_path: str | Path) -> list[str]:
    """`model.pt` and, when there is one, its sidecar `model.json`."""
    model_path = Path(model_path)
    return [str(p) for p in (model_path, model_path.with_suffix(".json")) if p.is_file()]


def pinned_requirements() -> list[str]:
    """`name==version` of the installed packages the network needs (MLflow would otherwise infer them by loading
    the model in a subprocess)."""
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pins


def signature(network: torch.nn.Module) -> ModelSignature | None:
    """Input (B, C, H, W) float32 images in the network's frame, output (B, classes + 1, H, W) logits; None for a
    network that does not record its arguments."""
    args = network_args(network)
    if not args or not {"in_channels", "img_size", "num_classes"} <= set(args):
        return None
    size = int(args["img_size"])
    image = TensorSpec(np.dtype(np.float32), (-1, int(args["in_channels"]), size, size))
    logits = TensorSpec(np.dtype(np.float32), (-1, int(args["num_classes"]) + 1, size, size))
    return ModelSignature(inputs=Schema([image]), outputs=Schema([logits]))


def best_network(network: torch.nn.Module, model_path: str | Path) -> torch.nn.Module:
    """A CPU copy of `network` (unwrapped from DDP) in eval mode, holding the weights saved in `model_path`."""
    model = copy.deepcopy(getattr(network, "module", network)).cpu().eval()
    model.load_state_dict(model_weights(model_path))
    return model


def log_trained_model(
    client: MlflowClient,
    run_id: str,
    network: torch.nn.Module,
    model_path: str | Path,
    name: str = "model",
    registered_model_name: str | None = None,
) -> ModelInfo:
    """Log the best model of `run_id` as the MLflow model `name`, registered as `registered_model_name` if given.

    MLflow's `log_model` works on the global tracking URI: it is pointed at `client`'s store for the call only.
    The module is pickled (MLflow's default for torch 2.14, `pt2`, traces it with `torch.export` and needs an input
    example; a pickle takes any network the bundle builds).
    """
    model = best_network(network, model_path)
    run = client.get_run(run_id)
    # created here, in the run's experiment: MLflow would put it in the default experiment, with its files under
    # ./mlruns of the current folder
    logged = client.create_logged_model(
        run.info.experiment_id, name=name, source_run_id=run_id, params=run.data.params, model_type="segmentation"
    )
    with _use_tracking_uri(client.tracking_uri):
        info = _mlflow_pytorch().log_model(
            model,
            name=name,
            run_id=run_id,
            model_id=logged.model_id,
            signature=signature(model),
            extra_files=model_files(model_path),
            code_paths=[str(CODE_DIR)],
            pip_requirements=pinned_requirements(),
            registered_model_name=registered_model_name,
            serialization_format="pickle",
        )
    logger.info("logged the best model as MLflow model %s (%s)", info.model_uri, info.model_id)
    return info


def _mlflow_pytorch():
    """`mlflow.pytorch`, imported when a model is logged: importing it calls `logging.basicConfig`, which would
    take the root logger from every program that merely imports samsp_monai (their INFO lines vanished)."""
    import mlflow.pytorch

    return mlflow.pytorch
