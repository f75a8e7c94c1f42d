"""The bundle served, retrained and ranking volumes in a real MONAI Label 0.8.5 server, over HTTP on 127.0.0.1.

A demo-trained model is prepared into an app by scripts/prepare_monailabel_app.py; the studies folder holds
real MSD hippocampus volumes (four labelled, for /train) and, unlabelled for ranking, one more hippocampus
volume, a demo volume of the kind the model was trained on, and that demo volume with noise added.

MONAI Label must be importable by the Python running the tests (CI installs requirements-monailabel.txt into
the same venv) or by `$SAMSP_MONAILABEL_PYTHON`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from conftest import REPO, shared_data

pytestmark = pytest.mark.slow

CONFIGS = REPO / "bundle/configs"
LABELLED = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]
UNLABELLED_REAL = "hippocampus_007"
DEMO_CASE = "demo_000"  # a validation case of the demo data: never trained on
TIMINGS: dict[str, float] = {}


def monailabel_python() -> str:
    python = os.environ.get("SAMSP_MONAILABEL_PYTHON", sys.executable)
    if subprocess.run([python, "-c", "import monailabel"], capture_output=True).returncode:
        reason = f"monailabel is not installed for {python} (pip install -r requirements-monailabel.txt)"
        if os.environ.get("SAMSP_REQUIRE_DATA"):
            pytest.fail(reason)
        pytest.skip(reason)
    return python


def timed(name: str, fn, *args, **kwargs):
    start = time.monotonic()
    result = fn(*args, **kwargs)
    TIMINGS[name] = round(time.monotonic() - start, 1)
    print(f"[timing] {name}: {TIMINGS[name]} s", flush=True)
    return result


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, **kwargs)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def bundle_inference(configs: list[str], bundle_root: Path, volume: Path, out: Path) -> np.ndarray:
    """The bundle's own inference command on one volume, as a user runs it."""
    inputs = out / "in"
    inputs.mkdir(parents=True)
    (inputs / volume.name).symlink_to(volume)
    config_file = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file, "--bundle_root", str(bundle_root)]
        + ["--dataset_dir", str(inputs), "--output_dir", str(out), "--num_workers", "0"]
    )
    return np.asarray(nib.load(out / volume.name.replace(".nii.gz", "_seg.nii.gz")).dataobj)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    python = monailabel_python()
    msd = shared_data("msd-hippocampus")
    tmp = tmp_path_factory.mktemp("monailabel")
    demo_root = tmp / "demo_bundle"
    timed(
        "demo training (8 epochs)",
        run,
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file"]
        + [f"['{CONFIGS / 'train.json'}','{CONFIGS / 'demo.json'}']", "--bundle_root", str(demo_root)]
        + ["--max_epochs", "8"],
    )

    studies = tmp / "studies"
    (studies / "labels/final").mkdir(parents=True)
    for name in LABELLED:
        shutil.copy(msd / f"imagesTr/{name}.nii.gz", studies)
        shutil.copy(msd / f"labelsTr/{name}.nii.gz", studies / "labels/final")
    shutil.copy(msd / f"imagesTr/{UNLABELLED_REAL}.nii.gz", studies)
    demo = nib.load(CONFIGS.parent / f"demo_data/imagesTr/{DEMO_CASE}.nii.gz")
    shutil.copy(CONFIGS.parent / f"demo_data/imagesTr/{DEMO_CASE}.nii.gz", studies)
    values = np.asarray(demo.dataobj, dtype=np.float32)
    noisy = values + np.random.default_rng(0).normal(0, 0.5 * values.std(), values.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(noisy, demo.affine), studies / f"{DEMO_CASE}_noisy.nii.gz")

    app = tmp / "app"
    prepared = timed(
        "prepare app",
        run,
        [python, "scripts/prepare_monailabel_app.py", "--app", str(app), "--model", str(demo_root / "models/model.pt")]
        + ["--configs", str(CONFIGS / "demo.json"), "--studies", str(studies)],
    )
    command = prepared.stdout.strip().splitlines()[-1].split()
    assert command[:4] == [python, "-m", "monailabel.main", "start_server"]
    port = free_port()
    command[command.index("--port") + 1] = str(port)
    command += ["--conf", "epistemic_model", "samsp", "--conf", "epistemic_simulation_size", "3"]
    url = f"http://127.0.0.1:{port}"
    # scoring only when this test asks; samsp_monai from this checkout, whatever the venv's install points at
    env = {**os.environ, "MONAI_LABEL_AUTO_UPDATE_SCORING": "false", "PYTHONPATH": str(REPO)}
    log = open(tmp / "server.log", "w")
    # its own empty working folder: the server takes an image id that names an existing path as that path
    (tmp / "server").mkdir()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp / "server")
    start = time.monotonic()
    while True:
        try:
            if requests.get(f"{url}/info/", timeout=5).ok:
                break
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() - start > 300:
            log.flush()
            pytest.fail(f"MONAI Label server did not start:\n{(tmp / 'server.log').read_text()[-5000:]}")
        time.sleep(2)
    TIMINGS["server start"] = round(time.monotonic() - start, 1)
    print(f"[timing] server start: {TIMINGS['server start']} s", flush=True)
    yield {"url": url, "app": app, "studies": studies, "tmp": tmp, "demo_root": demo_root}
    process.terminate()
    process.wait(timeout=60)
    log.close()
    print(f"[timing] all: {TIMINGS}", flush=True)


def test_info_lists_the_model_with_the_metadata_label_names_as_3d(server):
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    model = info["models"]["samsp"]
    assert model["labels"] == {"anterior": 1, "posterior": 2}
    assert model["dimension"] == 3 and model["type"] == "segmentation"
    assert "samsp" in info["trainers"]
    assert "least_consistent" in info["strategies"] and "samsp_consistency" in info["scoring"]
    assert "epistemic" in info["strategies"] and "samsp" in info["scoring"]


def infer(server, image_id: str, name: str) -> np.ndarray:
    """The served labels of one image, timed as `name`."""
    params = {"image": image_id, "output": "image"}
    response = timed(name, requests.post, f"{server['url']}/infer/samsp", params=params, timeout=600)
    assert response.status_code == 200, response.text[-2000:]
    served_path = server["tmp"] / f"served_{image_id}.nii.gz"
    served_path.write_bytes(response.content)
    return np.asarray(nib.load(served_path).dataobj)


def exports(server) -> list[str]:
    return sorted(p.name for p in (server["app"] / "model/samsp/models").glob("encoder-*.onnx"))


@pytest.mark.parametrize("image_id", [UNLABELLED_REAL, DEMO_CASE])
def test_infer_returns_the_bundle_inference_in_the_input_geometry(server, image_id):
    labels = infer(server, image_id, f"/infer {image_id}")
    # the served model runs the exported encoder, built beside its model.pt on the first request
    assert len(exports(server)) == 1
    # a second request reads the embeddings from the server's memory: same labels (timings printed)
    np.testing.assert_array_equal(infer(server, image_id, f"/infer {image_id} again"), labels)
    served = nib.load(server["tmp"] / f"served_{image_id}.nii.gz")
    volume = nib.load(server["studies"] / f"{image_id}.nii.gz")
    assert served.shape == volume.shape
    np.testing.assert_allclose(served.affine, volume.affine, atol=1e-4)
    assert set(np.unique(labels)) <= {0, 1, 2}
    configs = [str(CONFIGS / "inference.json"), str(CONFIGS / "demo.json")]
    own = bundle_inference(
        configs,
        server["demo_root"],
        server["studies"] / f"{image_id}.nii.gz",
        server["tmp"] / "bundle_inference" / image_id,
    )
    np.testing.assert_array_equal(labels, own)


def dice(prediction: np.ndarray, label: np.ndarray) -> float:
    return float(
        np.mean(
            [
                2 * np.sum((prediction == c) & (label == c)) / max(1, np.sum(prediction == c) + np.sum(label == c))
                for c in (1, 2)
            ]
        )
    )


def test_scoring_ranks_a_badly_segmented_volume_above_a_well_segmented_one(server):
    url = server["url"]
    response = timed(
        "/scoring samsp_consistency",
        requests.post,
        f"{url}/scoring/samsp_consistency",
        params={"run_sync": "true"},
        json={"device": "cpu"},
        timeout=900,
    )
    assert response.status_code == 200, response.text[-2000:]
    scores = response.json()["scores"]
    assert set(scores) == {UNLABELLED_REAL, DEMO_CASE, f"{DEMO_CASE}_noisy"}
    # how well each volume is segmented, from its ground truth and the served model's labels
    quality = {}
    truth = {
        UNLABELLED_REAL: shared_data("msd-hippocampus") / f"labelsTr/{UNLABELLED_REAL}.nii.gz",
        DEMO_CASE: CONFIGS.parent / f"demo_data/labelsTr/{DEMO_CASE}.nii.gz",
    }
    truth[f"{DEMO_CASE}_noisy"] = truth[DEMO_CASE]
    for image_id, label_path in truth.items():
        served = requests.post(f"{url}/infer/samsp", params={"image": image_id, "output": "image"}, timeout=600)
        path = server["tmp"] / f"quality_{image_id}.nii.gz"
        path.write_bytes(served.content)
        quality[image_id] = dice(np.asarray(nib.load(path).dataobj), np.asarray(nib.load(label_path).dataobj))
    print(f"[ranking] scores {scores}; Dice against ground truth {quality}", flush=True)
    best, worst = max(quality, key=quality.get), min(quality, key=quality.get)
    assert quality[best] > quality[worst] + 0.1
    assert scores[worst] > scores[best]
    assert scores[f"{DEMO_CASE}_noisy"] > scores[DEMO_CASE]
    chosen = requests.post(f"{url}/activelearning/least_consistent", json={}, timeout=60).json()
    assert chosen["id"] == max(scores, key=scores.get)


def test_epistemic_scoring_samples_the_network_with_dropout(server):
    response = timed(
        "/scoring samsp (epistemic, 3 samples)",
        requests.post,
        f"{server['url']}/scoring/samsp",
        params={"run_sync": "true"},
        json={"device": "cpu", "max_workers": 1},
        timeout=900,
    )
    assert response.status_code == 200, response.text[-2000:]
    assert response.json()["executed"] == 3, response.json()
    chosen = requests.post(f"{server['url']}/activelearning/epistemic", json={}, timeout=60).json()
    assert chosen["id"] in {UNLABELLED_REAL, DEMO_CASE, f"{DEMO_CASE}_noisy"}
    # MONAI Label computes its "entropy" on the post-processed output, the argmax label map of any segmentation
    # bundle, so the value is finite but not an entropy of probabilities (it can be negative)
    assert np.isfinite(chosen["epistemic_entropy"])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_twice_trains_each_time_and_replaces_the_served_model_only_when_better(server):
    models = server["app"] / "model/samsp/models"
    infer(server, DEMO_CASE, "/infer before training")
    served_export = exports(server)
    replaced = False
    for attempt in (1, 2):
        before = _digest(models / "model.pt")
        response = timed(
            f"/train #{attempt} (1 epoch)",
            requests.post,
            f"{server['url']}/train/samsp",
            params={"run_sync": "true"},
            json={"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False},
            timeout=1800,
        )
        assert response.status_code == 200, response.text[-2000:]
        stats = response.json()
        assert stats["epochs"] == 1 and stats["iterations"] > 0, stats
        if stats["replaced_served_model"]:
            assert _digest(models / "model.prev.pt") == before and _digest(models / "model.pt") != before
        else:
            assert _digest(models / "model.pt") == before
        replaced |= stats["replaced_served_model"]
    # the next request serves the new weights through a new export, and the stale one is gone
    infer(server, DEMO_CASE, "/infer after training")
    assert len(exports(server)) == 1 and (exports(server) != served_export) == replaced
