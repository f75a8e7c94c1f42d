"""Prepare a MONAI Label app folder that serves, retrains and ranks with a trained SAM-SP model.

Run it with the Python that has MONAI Label (`pip install -r requirements-monailabel.txt`):

    python scripts/prepare_monailabel_app.py --app /data/samsp_app --model bundle/models/model.pt \
        --configs bundle/configs/demo.json --studies /data/studies

It writes
- `<app>/`: the stock `monaibundle` app of the installed monailabel, with this project's thin extension as
  `main.py` (self-consistency scoring and the `least_consistent` strategy, see monailabel_app/main.py);
- `<app>/model/<name>/`: a self-contained serving bundle, configs merged from the bundle's own plus the
  override files the model was trained with (`--configs`), `network_def` and the settings that change pixels
  from the model's record (model.json), and the trained `models/model.pt` with its model.json
  (see samsp_monai/serving/serving_bundle.py);
and prints the `start_server` command.
"""

from __future__ import annotations

import argparse
import ast
import json
import shlex
import shutil
import sys
from pathlib import Path

from samsp_monai.errors import SAMSPError
from samsp_monai.model_file import load_model, save_model
from samsp_monai.serving.serving_bundle import check_loads, inference_config, serving_metadata, train_config, write_json

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
APP_EXTENSION = REPO / "monailabel_app" / "main.py"


def stock_app() -> Path:
    """The `monaibundle` sample app that ships with the monailabel wheel (installed under sys.prefix)."""
    path = Path(sys.prefix) / "monailabel" / "sample-apps" / "monaibundle"
    if not (path / "main.py").is_file():
        raise SAMSPError(
            f"{path}: the monaibundle sample app is not there; run this script with the Python that has "
            "monailabel installed (pip install -r requirements-monailabel.txt)"
        )
    return path


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """`KEY=VALUE` pairs; VALUE is read as a Python literal when it is one (`False`, `128`), else as a string."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SAMSPError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set modality=CT")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def prepare(
    app: Path, model: Path, name: str, configs: list[Path], overrides: dict[str, object], overwrite: bool
) -> Path:
    """Write the app and the serving bundle; returns the bundle folder."""
    bundle = app / "model" / name
    served = bundle / "models" / "model.pt"
    if served.exists() and not overwrite:
        raise SAMSPError(
            f"{served} exists (it may hold a model retrained in MONAI Label); pass --overwrite to replace it"
        )
    trained = load_model(model)
    args, settings = trained.network_args or {}, trained.settings or {}
    inference = inference_config([BUNDLE / "configs/inference.json", *configs], overrides, args, settings)
    train = train_config([BUNDLE / "configs/train.json", *configs], overrides, args, settings)
    check_loads(inference, bundle, trained.state_dict)

    shutil.copytree(stock_app(), app, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.move(app / "main.py", app / "monaibundle_main.py")
    shutil.copy2(APP_EXTENSION, app / "main.py")
    metadata = serving_metadata(json.loads((BUNDLE / "configs/metadata.json").read_text()), inference)
    write_json(bundle / "configs/inference.json", inference)
    write_json(bundle / "configs/train.json", train)
    write_json(bundle / "configs/metadata.json", metadata)
    shutil.copy2(BUNDLE / "configs/logging.conf", bundle / "configs/logging.conf")
    shutil.copy2(BUNDLE / "LICENSE", bundle / "LICENSE")
    (bundle / "docs").mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUNDLE / "docs/README.md", bundle / "docs/README.md")
    details = {k: (trained.record or {}).get(k) for k in ("epoch", "metric_name", "metric_value")}
    save_model(served, trained.state_dict, args or None, trained.settings, details)
    return bundle


def start_command(app: Path, studies: str, name: str, host: str, port: int) -> str:
    """MONAI Label started offline: `zoo_source github` makes it use <app>/model/<name> as it is (the default
    source fetches the model-zoo index first), `sam2 false` skips the stock SAM2 task's weight download."""
    words = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", studies]
    words += ["--conf", "models", name, "--conf", "zoo_source", "github", "--conf", "sam2", "false"]
    words += ["--host", host, "--port", str(port)]
    return shlex.join(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", type=Path, required=True, help="app folder to write (created if absent)")
    parser.add_argument("--model", type=Path, default=BUNDLE / "models/model.pt", help="trained model.pt")
    parser.add_argument("--name", default="samsp", help="model name in MONAI Label (folder <app>/model/<name>)")
    parser.add_argument(
        "--configs", type=Path, nargs="*", default=[], help="override files the model was trained with, e.g. demo.json"
    )
    parser.add_argument("--set", dest="pairs", action="append", default=[], help="KEY=VALUE override, repeatable")
    parser.add_argument("--studies", default="<studies folder>", help="images folder, for the printed command")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--overwrite", action="store_true", help="replace a model already served from --app")
    options = parser.parse_args()
    app = options.app.resolve()
    bundle = prepare(
        app, options.model, options.name, options.configs, parse_overrides(options.pairs), options.overwrite
    )
    print(f"prepared MONAI Label app {app} with model {options.name!r} ({bundle}); start it with:")
    print(start_command(app, options.studies, options.name, options.host, options.port))


if __name__ == "__main__":
    main()
