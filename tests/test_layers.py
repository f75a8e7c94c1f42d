"""Imports in samsp_monai only run downward: base < model < data < evaluation < training < serving.

Every module's imports (module level and inside functions) are read with `ast`, resolved to the layer they
come from, and compared with the importing module's layer. The top-level `__init__.py` is the package's
facade and may import every layer; no module may import that facade, as it would pull in all layers.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "samsp_monai"
LAYERS = ("base", "model", "data", "evaluation", "training", "serving")
FACADE = "facade"
BASE_MODULES = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}


def dotted_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> str:
    """The layer of a dotted name inside samsp_monai; the package itself and names it re-exports are the facade."""
    parts = name.split(".")
    if len(parts) == 1:
        return FACADE
    if parts[1] in LAYERS:
        return parts[1]
    return "base" if parts[1] in BASE_MODULES else FACADE


def imported_names(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted name) for each samsp_monai import in `source`, relative imports resolved against `module`."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "samsp_monai"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != "samsp_monai":
                continue
            # `from samsp_monai import x` / `from . import x`: x may be a layer or a base module
            names = [f"{target}.{a.name}" for a in node.names] if target == "samsp_monai" else [target]
            found += [(node.lineno, name) for name in names]
    return found


def upward_imports(path: Path, source: str) -> list[str]:
    module = dotted_name(path)
    own = layer_of(module)
    if own == FACADE:
        return []
    rank = LAYERS.index(own)
    bad = []
    for line, name in imported_names(source, module, path.name == "__init__.py"):
        target = layer_of(name)
        if target == FACADE or LAYERS.index(target) > rank:
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {own} module imports {name} ({target})")
    return bad


def test_package_has_every_layer_and_nothing_else():
    subpackages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subpackages == set(LAYERS[1:])
    assert not {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} - subpackages


def test_no_module_imports_from_a_higher_layer():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 30
    bad = [msg for path in modules for msg in upward_imports(path, path.read_text())]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("relpath", "source", "expected"),
    [
        ("model/network.py", "from ..errors import SAMSPError\nfrom .boxes import masks_to_boxes\n", 0),
        ("serving/export.py", "from ..training.checkpoints import atomic_save\n", 0),
        ("model/network.py", "from ..data.transforms import X\n", 1),
        ("data/transforms.py", "def f():\n    from samsp_monai.serving.export import load_merged\n", 1),
        ("evaluation/metrics.py", "import samsp_monai.training.tracking\n", 1),
        ("atomic.py", "from .model import network\n", 1),
        ("model/__init__.py", "from . import boxes, network\n", 0),
        ("model/loss.py", "from .. import SAMSP\n", 1),
        ("data/datalist.py", "from samsp_monai import errors, model\n", 0),
    ],
)
def test_checker_flags_exactly_the_upward_imports(relpath, source, expected):
    """The checker itself: downward and same-layer imports pass, upward ones and the facade are caught."""
    assert len(upward_imports(PACKAGE / relpath, source)) == expected
