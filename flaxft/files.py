"""Files and folders that appear whole or not at all, and what a path holds.

`replaced_atomically` is the one way flaxft writes a file or folder that someone may read
while it is written (or after a crash): the content goes to a temporary name beside the
target and takes its place in one rename. `kind_of` says whether a path is a Hugging
Face model folder or a flaxft workdir, checkpoints folder or step folder.
"""

import contextlib
import enum
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from flaxft.errors import InputError

CHECKPOINTS = "checkpoints"  # a workdir's Orbax checkpoints: CHECKPOINTS/<step>/...
MODEL_RECORD = "model"  # the item of a step naming its architecture and config
TOKENIZER = "tokenizer"  # a workdir's (or checkpoint folder's) copy of its tokenizer
SENTENCE_TRANSFORMERS = "sentence_transformers"  # and of its source's sentence-transformers files


@contextlib.contextmanager
def replaced_atomically(target: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `target` (nothing is there yet: write a file or make
    a folder at it). When the block completes, it takes `target`'s place in one rename,
    replacing a file or folder already there; when the block fails, it is removed and
    `target` is as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink() and tmp.is_dir():
            retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
            os.replace(target, retired)  # a folder cannot be renamed over a non-empty one
            os.replace(tmp, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def write_text_atomically(target: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8, line endings as given) to `target` through `replaced_atomically`."""
    with replaced_atomically(target) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


@contextlib.contextmanager
def new_output_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary folder that becomes `out_dir` when the block completes (and is
    removed when it fails), its files readable by all (0644, folders 0755) whatever the
    writers chose (safetensors writes 0600). An existing non-empty `out_dir` is an
    InputError raised before anything is written: nothing is ever overwritten."""
    out = Path(out_dir).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: already exists and is not empty; choose a new output folder")
    with replaced_atomically(out) as tmp:
        tmp.mkdir()
        yield tmp
        for folder, subfolders, files in os.walk(tmp):
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)


class PathKind(enum.Enum):
    """What `kind_of` finds at a path."""

    HF_FOLDER = "a Hugging Face model folder"  # config.json and weights
    WORKDIR = "a flaxft workdir"  # holds checkpoints/
    CHECKPOINTS = "a flaxft checkpoints folder"  # holds <step>/ folders
    STEP = "a flaxft checkpoint step"  # checkpoints/<step>/ with a model record
    OTHER = "neither a Hugging Face folder nor a flaxft checkpoint"


def kind_of(path: str | os.PathLike) -> PathKind:
    """What `path` holds, judged by its layout alone (nothing is read). A missing path is
    OTHER."""
    p = Path(path)
    if (p / CHECKPOINTS).is_dir():
        return PathKind.WORKDIR
    if p.name.isdigit() and (p / MODEL_RECORD).exists():
        return PathKind.STEP
    if p.name == CHECKPOINTS and p.is_dir():
        return PathKind.CHECKPOINTS
    if (p / "config.json").is_file():
        return PathKind.HF_FOLDER
    return PathKind.OTHER
