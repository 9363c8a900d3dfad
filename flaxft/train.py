"""Training from a config: validate it, build the run with the setup it asks for
(pretraining, or fine-tuning when config.task.name names a fine-tuning task), train it.

    run(config, workdir) -> last metrics

is what `python -m flaxft.main` does after parsing flags; tests and notebooks call it
directly.
"""

from pathlib import Path

import ml_collections

from flaxft import config as config_lib
from flaxft import finetune, loop, pretrain


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Trains as `config` says in `workdir`, resuming from its newest checkpoint.

    Checks every input before compiling or writing anything. Returns the last logged
    metrics ({} when the workdir had already finished). Raises InputError on bad input,
    loop.NonFiniteLoss when the loss goes NaN/Inf under on_nonfinite="abort".
    """
    config_lib.validate(config)
    setup = pretrain.setup if config.task.name == "pretraining" else finetune.setup
    return loop.train(setup(config, Path(workdir)))
