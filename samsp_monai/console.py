"""What a bundle run prints: our own lines, not other libraries' warnings, banners and per-epoch engine logs.

A normal `python -m monai.bundle run` of this bundle used to start with half a dozen lines of other libraries'
noise (codec plugin warnings, deprecations, MONAI's input summary) and log every engine event twice (ignite's own
lines beside this project's progress line). `quiet_third_party` hides them when the bundle runner is the program
(importing samsp_monai elsewhere, e.g. in MONAI Label or a notebook, changes nothing). `SAMSP_DEBUG=1` shows
everything, as it shows full tracebacks. MONAI's config trust notice is printed before any bundle code runs and
stays.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

DEBUG_SWITCH = "SAMSP_DEBUG"
QUIET_LOGGERS = {
    "ignite": logging.CRITICAL,  # per-epoch "Complete"/"best metric" lines; errors reach the user anyway
    "monai.data.nvimgcodec_pydicom_plugin": logging.ERROR,  # "nvImageCodec is not available" on every CPU run
}
# only for `monai.bundle run`: the input summary after initialisation; other commands (verify_net_in_out,
# ckpt_export) report their result through this logger
QUIET_IN_RUN = {"monai.bundle.scripts": logging.WARNING}


def debug_output() -> bool:
    """True when the user asked to see everything (`SAMSP_DEBUG=1`)."""
    return bool(os.environ.get(DEBUG_SWITCH))


def bundle_runner_is_main() -> bool:
    """True inside `python -m monai.bundle ...`, the command line this bundle's documentation uses."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "monai.bundle.__main__"


def quiet_third_party() -> None:
    """Ignore other libraries' warnings and lower their chatty loggers, unless `SAMSP_DEBUG` is set."""
    if debug_output():
        return
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"samsp_monai(\.|$)")
    quiet = QUIET_LOGGERS | (QUIET_IN_RUN if sys.argv[1:2] == ["run"] else {})
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
