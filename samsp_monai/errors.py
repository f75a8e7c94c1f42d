"""User-fixable errors: one short message that names the file or key, says what is wrong and what to do.

MONAI's bundle runner wraps every failing config expression in `RuntimeError("Failed to evaluate ...")`,
which buries the cause under hundreds of lines of traceback. `install_short_errors` replaces the default
exception hook so that an uncaught chain holding a `SAMSPError` prints that error's message alone, and Ctrl-C
prints one line instead of a `KeyboardInterrupt` traceback. Set `SAMSP_DEBUG=1` for the full traceback.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType


class SAMSPError(Exception):
    """A problem with the user's files, settings or environment; its message is all the user needs to see."""


def require_bool(key: str, value: object) -> bool:
    """`value` of the command-line option `--key`, refused unless a bool: the runner reads `--key true` as the
    truthy text 'true'."""
    if not isinstance(value, bool):
        raise SAMSPError(f"--{key} must be True or False (capitalised), got {value!r}")
    return value


def find_user_error(error: BaseException | None) -> SAMSPError | None:
    """The first `SAMSPError` in an exception's cause/context chain, or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, SAMSPError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def short_excepthook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    """Print only the user error's message (exit status stays 1); anything else gets the full traceback."""
    debug = bool(os.environ.get("SAMSP_DEBUG"))
    user_error = None if debug else find_user_error(error)
    if not debug and user_error is None and issubclass(kind, KeyboardInterrupt):
        print("interrupted (Ctrl-C)", file=sys.stderr)
    elif user_error is None:
        sys.__excepthook__(kind, error, tb)
    else:
        print(f"samsp-monai error: {user_error}\n(set SAMSP_DEBUG=1 for the full traceback)", file=sys.stderr)


def install_short_errors() -> None:
    """Use `short_excepthook` unless another tool already replaced the default hook."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = short_excepthook
