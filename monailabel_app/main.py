"""MONAI Label app of samsp-monai: the stock `monaibundle` app plus SAM-SP self-consistency ranking.

`scripts/prepare_monailabel_app.py` copies the stock app's `main.py` beside this file as `monaibundle_main.py`
and this file as `main.py`. Everything the stock app does (bundle inference, training, epistemic scoring with
`--conf epistemic_model`) stays; this adds, per bundle model `<name>`:

- scoring method `<name>_consistency`: for every unlabelled volume, the mean disagreement of the served
  model's pass-1 and final-pass class probabilities (samsp_monai.serving.consistency), stored in the datastore as
  `samsp_consistency` (recomputed only after the model changed);
- strategy `least_consistent`: the unlabelled volume with the highest score (the one the model is least sure
  of) is served next; unscored volumes come last;
- strategy `epistemic` when the app runs with `--conf epistemic_model <name>` (Monte Carlo dropout entropy).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import monaibundle_main
import torch
from monai.bundle import ConfigParser
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import name_to_device

from samsp_monai.model_file import load_model
from samsp_monai.serving.consistency import NotScoredYet, least_consistent_image, self_consistency

logger = logging.getLogger(__name__)

SCORE_KEY = "samsp_consistency"
MODEL_TS_KEY = "samsp_consistency_model_ts"


def self_prompting(bundle_path: str) -> bool:
    """Whether the served network prompts itself (a single-pass model has no second pass to score)."""
    parser = ConfigParser()
    parser.read_config(os.path.join(bundle_path, "configs", "inference.json"))
    return bool(parser.get_parsed_content("network_def#self_prompt", instantiate=False))


class SelfConsistencyScoring(ScoringMethod):
    """Scores unlabelled images by how much SAM-SP's self-prompted pass changes its prompt-free prediction."""

    def __init__(self, bundle_path: str) -> None:
        super().__init__("SAM-SP self-consistency: disagreement of pass 1 and the final pass of the served model")
        self.bundle_path = bundle_path
        self.model_path = os.path.join(bundle_path, "models", "model.pt")

    def _load(self, device: torch.device) -> tuple[Any, Any, Any]:
        parser = ConfigParser()
        parser.read_config(os.path.join(self.bundle_path, "configs", "inference.json"))
        parser["bundle_root"] = self.bundle_path
        parser["device"] = device
        network = parser.get_parsed_content("network_def").to(device)
        network.load_state_dict(load_model(self.model_path).state_dict)
        return network.eval(), parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer")

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        start = time.time()
        device = name_to_device(request.get("device", "cuda" if torch.cuda.is_available() else "cpu"))
        model_ts = int(os.stat(self.model_path).st_mtime)
        network, preprocessing, inferer = self._load(torch.device(device))
        scores, skipped = {}, 0
        for image_id in datastore.get_unlabeled_images():
            info = datastore.get_image_info(image_id)
            if info.get(MODEL_TS_KEY) == model_ts and SCORE_KEY in info:
                scores[image_id], skipped = info[SCORE_KEY], skipped + 1
                continue
            image = preprocessing({"image": datastore.get_image_uri(image_id)})["image"]
            scores[image_id] = self_consistency(network, image.to(device), inferer)
            datastore.update_image_info(image_id, {SCORE_KEY: scores[image_id], MODEL_TS_KEY: model_ts})
            logger.info("%s: %s = %.4f", image_id, SCORE_KEY, scores[image_id])
        summary = {"total": len(scores), "skipped": skipped, "scores": scores, "latency": round(time.time() - start, 3)}
        logger.info("self-consistency scoring: %s", summary)
        return summary


class LeastConsistent(Strategy):
    """Serve the unlabelled image whose self-consistency score is highest (unscored images last); before any image
    is scored, answer with a message saying so instead of an image with a made-up score."""

    def __init__(self) -> None:
        super().__init__("Least self-consistent unlabelled image first (run the <model>_consistency scoring)")

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        try:
            image, score = least_consistent_image(images, lambda i: datastore.get_image_info(i).get(SCORE_KEY))
        except NotScoredYet as error:  # MONAI Label answers the request with this message
            raise MONAILabelException(MONAILabelError.APP_ERROR, str(error)) from error
        return {"id": image, SCORE_KEY: score}


class ReportingBundleTrainTask(BundleTrainTask):
    """The stock bundle trainer, answering each request (and `/info/` train_stats) with what the bundle's
    training wrote to models/train_stats.json: epochs, iterations, best metric, whether the model was replaced."""

    def stats(self) -> dict[str, Any]:
        path = os.path.join(self.bundle_path, "models", "train_stats.json")
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        super().__call__(request, datastore)
        return self.stats()


class SAMSPApp(monaibundle_main.MyApp, MONAILabelApp):
    """MONAI Label takes the first class in main.py whose direct bases name MONAILabelApp, hence the second base
    (and the module import: a `MyApp` name in this module would be found first)."""

    def init_trainers(self) -> dict[str, TrainTask]:
        return {name: ReportingBundleTrainTask(self.models[name], self.conf) for name in super().init_trainers()}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        methods = super().init_scoring_methods()
        for name, path in self.models.items():
            if self_prompting(path):
                methods[f"{name}_consistency"] = SelfConsistencyScoring(path)
            else:
                logger.info("%s: single-pass model (self_prompt False), no %s_consistency scoring", name, name)
        return methods

    def init_strategies(self) -> dict[str, Strategy]:
        strategies = {**super().init_strategies(), "least_consistent": LeastConsistent()}
        if self.epistemic_models:  # the stock app scores epistemic entropy but offers no strategy that uses it
            strategies["epistemic"] = Epistemic()
        return strategies
