"""Command-line plumbing shared by the entry points: offline defaults, absl flags with an
ml-collections config file, every parse error reported as one line with exit code 2."""

import ast
import contextlib
import os
import sys

from absl import flags
from ml_collections import config_flags

from flaxft.errors import fail

OFFLINE_DEFAULTS = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def set_offline_defaults() -> None:
    """Nothing is downloaded unless the user asks (HF_HUB_OFFLINE=0 ...), and the fast
    tokenizers do not start their own threads. Call before Hugging Face libraries are
    imported: they read these once."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)


def define_config_flag():
    """--config: an ml-collections config file, locked (overrides may only set existing keys)."""
    return config_flags.DEFINE_config_file("config", None, "Path to an ml-collections config file.",
                                           lock_config=True)


def parse_flags() -> None:
    """Parses sys.argv; a bad flag, stray argument or missing config file exits 2."""
    try:
        argv = flags.FLAGS(sys.argv)
    except Exception as e:  # unknown override keys, bad values
        fail(f"bad command line: {_readable(e)}")
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config_file = flags.FLAGS["config"].present and config_flags.get_config_filename(flags.FLAGS["config"])
    if not config_file:
        fail("--config is required (e.g. --config configs/pretrain_tiny.py)")
    if not os.path.isfile(config_file.split(":")[0]):
        fail(f"{config_file}: no such config file")


def _readable(error: Exception) -> str:
    """absl/ml_collections wrap some messages in a repr; unwrap them."""
    text = str(error)
    if text[:1] in "'\"":
        with contextlib.suppress(ValueError, SyntaxError):
            text = ast.literal_eval(text)
    return text
