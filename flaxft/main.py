"""Entry point: flags -> config -> distributed init -> training.

    python -m flaxft.main --config configs/pretrain_tiny.py --workdir runs/demo \
        [--config.num_train_steps=200 ...]

The config is locked: overrides may only set keys that exist. Bad input exits 2 with
one line naming the field or file.
"""

import ast
import contextlib
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from flaxft.errors import fail  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml-collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and plots go.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config_file = flags.FLAGS["config"].present and config_flags.get_config_filename(flags.FLAGS["config"])
    if not config_file:
        fail("--config is required (e.g. --config configs/pretrain_tiny.py)")
    if not os.path.isfile(config_file.split(":")[0]):
        fail(f"{config_file}: no such config file")
    if not _WORKDIR.value:
        fail("--workdir is required")
    logging.set_verbosity(logging.WARNING)  # Orbax and JAX log every file they touch at INFO
    from flaxft import train
    from flaxft.errors import InputError

    try:
        train.run(_CONFIG.value, _WORKDIR.value)
    except InputError as e:
        fail(str(e))


def run() -> None:
    try:
        argv = flags.FLAGS(sys.argv)
    except Exception as e:  # unknown override keys, bad values
        fail(f"bad command line: {_readable(e)}")
    main(argv)


def _readable(error: Exception) -> str:
    """absl/ml_collections wrap some messages in a repr; unwrap them."""
    text = str(error)
    if text[:1] in "'\"":
        with contextlib.suppress(ValueError, SyntaxError):
            text = ast.literal_eval(text)
    return text


if __name__ == "__main__":
    run()
