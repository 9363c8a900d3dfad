"""Output folders that appear whole or not at all."""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from flaxft.errors import InputError


@contextlib.contextmanager
def new_output_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary folder beside `out_dir`, renamed to `out_dir` when the block
    completes and removed when it fails. An existing non-empty `out_dir` is an InputError
    raised before anything is written: nothing is ever overwritten."""
    out = Path(out_dir).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: already exists and is not empty; choose a new output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
