"""The one exception type for bad user input (config, paths, data, checkpoints).

Command-line entry points catch it, print its one-line message and exit with code 2.
"""

import os
import sys
from collections.abc import Callable
from typing import NoReturn

EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Bad input from the user; the message names the field, file or tensor at fault."""


def exit_on_input_error(fn: Callable[[], object]) -> object:
    """Runs `fn()`; on InputError prints `error: <message>` to stderr and exits 2."""
    try:
        return fn()
    except InputError as e:
        fail(str(e))


def fail(message: str) -> NoReturn:
    """Prints a one-line error and exits with the bad-input code at once. Background
    threads left by a failed read must not add their own noise (TensorStore's native
    threads print "Event loop is closed" tracebacks once Orbax has closed its loop), so
    stderr is pointed at /dev/null and the line goes out through a copy of it."""
    sys.stdout.flush()
    sys.stderr.flush()
    stderr = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    os.write(stderr, f"error: {' '.join(message.split())}\n".encode())
    os._exit(EXIT_BAD_INPUT)
