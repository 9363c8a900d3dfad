"""The one exception type for bad user input (config, paths, data, checkpoints), and the
one-line exit of the command-line entry points.

They catch InputError, print its message on one line and exit with code 2; failures at
run time (a non-finite loss, a save that failed) exit 1 the same way.
"""

import atexit
import os
import sys
from collections.abc import Callable
from typing import NoReturn

EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1


class InputError(Exception):
    """Bad input from the user; the message names the field, file or tensor at fault."""


def exit_on_input_error(fn: Callable[[], object]) -> object:
    """Runs `fn()`; on InputError prints `error: <message>` to stderr and exits 2."""
    try:
        return fn()
    except InputError as e:
        fail(str(e))


_BEFORE_EXIT: list[Callable[[], None]] = []


def before_exit(hook: Callable[[], None]) -> None:
    """Runs `hook` at normal exit and in `fail`, which exits without Python's cleanup."""
    atexit.register(hook)
    _BEFORE_EXIT.append(hook)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Prints a one-line error and exits with `code` (bad input) at once. Background
    threads left by a failed read must not add their own noise (TensorStore's native
    threads print "Event loop is closed" tracebacks once Orbax has closed its loop), so
    stderr is pointed at /dev/null and the line goes out through a copy of it."""
    sys.stdout.flush()
    sys.stderr.flush()
    for hook in _BEFORE_EXIT:
        hook()
    stderr = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    os.write(stderr, f"error: {' '.join(message.split())}\n".encode())
    os._exit(code)
