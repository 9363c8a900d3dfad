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
    """Prints a one-line error and exits with the bad-input code at once: background
    threads (Orbax, TensorStore) left by a failed read must not add their own noise."""
    sys.stdout.flush()
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    os._exit(EXIT_BAD_INPUT)
