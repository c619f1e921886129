"""User-facing errors: one clear paragraph and a non-zero exit instead of a traceback."""

from __future__ import annotations

import sys
import textwrap


class UserError(Exception):
    """A mistake in the user's input (config, data, checkpoint, file) with a message saying how to fix it."""


def report(error: BaseException, exit_code: int = 2) -> "None":
    """Print `error` as one wrapped paragraph on stderr and exit with `exit_code`."""
    message = " ".join(str(error).split())
    print("\n".join(textwrap.wrap(f"error: {message}", width=100)), file=sys.stderr)
    sys.exit(exit_code)


def find_user_error(error: BaseException) -> UserError | None:
    """The `UserError` that caused `error`, if any (Hydra's `instantiate` wraps what a `_target_` raises)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
