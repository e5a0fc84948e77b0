"""One exception type for mistakes a user can fix, the SIGTERM-as-Ctrl-C exception, and the
wrapper that turns both into an exit status instead of a traceback (or a silent death)."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, what a shell reports for Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, what a shell reports for `kill`


class UserError(Exception):
    """Bad input or a missing resource: reported as one line, exit status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (``kill``, a scheduler, a container stop).

    A KeyboardInterrupt, so every ``except KeyboardInterrupt`` that logs a run as interrupted
    and lets DataLoader workers shut down handles it exactly like Ctrl-C.
    """

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(f"terminated by signal {signal.Signals(signum).name}")
        self.signum = signum


def interrupt_message(exc: BaseException) -> str:
    """What a record's ``error`` says about an interruption."""
    if isinstance(exc, Terminated):
        return "terminated (SIGTERM)"
    return "interrupted by the user (Ctrl-C)"


def interrupt_exit_code(exc: BaseException) -> int:
    """143 for SIGTERM, 130 for Ctrl-C."""
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While inside, SIGTERM raises :class:`Terminated` in the main thread; the previous
    handler is restored on exit.

    Only the first SIGTERM raises: later ones (a scheduler repeating itself) are ignored while
    the interrupted run writes its record. Outside the main thread signals cannot be handled,
    so there this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum, frame):
        nonlocal raised
        if raised:
            return
        raised = True
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:  # None: the previous handler was not installed from Python; the default is closest
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def signals_deferred():
    """Hold Ctrl-C and SIGTERM back while inside, for steps that must not be cut in half
    (appending a record, starting DataLoader workers); one that arrived is re-raised on exit,
    to whatever handler was there before.

    Python-level handlers rather than a signal mask: torch's threads would still take a
    process-directed signal that the main thread has masked.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []

    def hold(signum, frame):
        pending.append(signum)

    previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


def cli_main(func):
    """Decorate a ``main(argv)``: a UserError prints ``error: ...`` and returns 2; SIGTERM
    unwinds as :class:`Terminated` (a KeyboardInterrupt) and, if ``main`` lets it escape,
    returns 143."""

    @functools.wraps(func)
    def wrapper(argv=None):
        with sigterm_as_interrupt():
            try:
                return func(argv)
            except UserError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_USER_ERROR
            except Terminated:
                print("terminated (SIGTERM)", file=sys.stderr)
                return EXIT_TERMINATED

    return wrapper
