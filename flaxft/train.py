"""Training from a config: validate it, claim the workdir, build the run with the setup
it asks for (pretraining, or fine-tuning when config.task.name names a fine-tuning
task), train it.

    run(config, workdir) -> last metrics

is what `python -m flaxft.main` does after parsing flags; tests and notebooks call it
directly.
"""

from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from flaxft import compilation_cache, finetune, loop, pretrain
from flaxft import config as config_lib
from flaxft import workdir as workdir_lib
from flaxft.errors import InputError


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Trains as `config` says in `workdir`, resuming from its newest checkpoint.

    Checks the config and the workdir (usable, and not in use by another run) before
    anything else, and every other input before compiling or writing. Compilations go
    to (and come from) config.compilation_cache_dir (`flaxft.compilation_cache`). Returns the last
    logged metrics ({} when the workdir had already finished). Raises InputError on bad
    input, loop.NonFiniteLoss when the loss goes NaN/Inf under on_nonfinite="abort",
    checkpoint.SaveFailed when a checkpoint cannot be written.
    """
    config_lib.validate(config)
    compilation_cache.use(config.compilation_cache_dir)
    path = Path(workdir).absolute()
    claim = _claim(path)
    with workdir_lib.held(claim):
        setup = pretrain.setup if config.task.name == "pretraining" else finetune.setup
        return loop.train(setup(config, path))


def _claim(path: Path) -> workdir_lib.Claim | None:
    """Process 0 checks and locks the workdir; in multi-process runs every process learns
    whether that worked, so none goes on alone."""
    claim, error = None, None
    if jax.process_index() == 0:
        try:
            claim = workdir_lib.Claim(path)
        except InputError as e:
            error = e
    if jax.process_count() > 1:
        claimed = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not claimed and error is None:
            error = InputError(f"{path}: process 0 could not claim the workdir (its error says why)")
    if error is not None:
        raise error
    return claim
