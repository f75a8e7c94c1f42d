"""The bundle's custom code, where model-zoo bundles keep it (`scripts/`, importable as `scripts` when a command
runs from the bundle folder).

SAM-SP's code is the `samsp_monai` package of the samsp-monai repository: one tested copy, which the configs
import as `samsp_monai`. A second copy here would drift from it, so this module only re-exports that package
and, where it is not installed, says how to install it instead of a bare `No module named 'samsp_monai'`.
"""

try:
    import samsp_monai
except ModuleNotFoundError as err:
    if err.name != "samsp_monai":
        raise
    raise ModuleNotFoundError(
        "this bundle's code is the samsp_monai package, which is not installed here: install the samsp-monai "
        "repository with `pip install <its folder or git URL>` (it is not on PyPI); see docs/README.md, "
        "'System requirements'",
        name="samsp_monai",
    ) from err

from samsp_monai import *  # noqa: F403 (the package's public names, as the zoo's scripts module offers them)

__all__ = samsp_monai.__all__
