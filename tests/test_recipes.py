"""The 16 GiB recipes (pretrain_bert_large.py:16gb, pretrain_modernbert_large.py:16gb):
their train step, compiled for one device at the recipe's rows per device, holds less
than 16 GiB (`flaxft.bench.step_memory`, XLA's own accounting of arguments, outputs and
temporaries; compiled on CPU, whose attention and bfloat16 products are laid out for
XLA:CPU, so an accelerator's number differs somewhat)."""

import runpy
from pathlib import Path

import jax
import pytest

from flaxft import bench

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30


@pytest.mark.slow
@pytest.mark.parametrize("recipe, params", [("pretrain_bert_large.py", 336_226_108),
                                            ("pretrain_modernbert_large.py", 395_881_664)])
def test_16gb_recipe_fits_one_16gib_device(recipe, params):
    module = runpy.run_path(str(REPO / "configs" / recipe))
    config = module["get_config"]("16gb")
    rows = module["ROWS_PER_DEVICE_16GB"]
    assert config.seq_len == 512 and config.global_batch_size // config.grad_accum_steps == rows
    assert (config.model.dtype, config.model.scan_layers, config.model.remat_policy) == ("bfloat16", True, "full")
    config.global_batch_size, config.grad_accum_steps = rows, 1  # one device's microbatch
    memory = bench.step_memory(config, jax.devices()[:1])
    assert memory["params"] == params
    assert memory["argument"] >= 12 * params  # float32 parameters and both Adam moments
    assert memory["alias"] >= 12 * params  # the donated state is reused for the new one
    assert memory["total"] < 16 * GIB, {k: v / GIB for k, v in memory.items()}
