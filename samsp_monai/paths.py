"""Where the bundle lives, so its configs resolve paths relative to the bundle rather than the shell's folder."""

from pathlib import Path


def default_bundle_root() -> str:
    """The `bundle/` folder beside this package (a source checkout); override `bundle_root` elsewhere."""
    return str(Path(__file__).resolve().parents[1] / "bundle")
