"""One exception type for mistakes a user can fix, and the wrapper that turns it into a
one-line message instead of a traceback."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """Bad input or a missing resource: reported as one line, exit status 2."""


def cli_main(func):
    """Decorate a ``main(argv)`` so that a UserError prints ``error: ...`` and exits 2."""

    @functools.wraps(func)
    def wrapper(argv=None):
        try:
            return func(argv)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapper
