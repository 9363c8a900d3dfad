"""ModernBERT-large: pretrain_modernbert_base.py's recipe (phases "1024" and "8192", see
its docstring) at the released large model's sizes (transformers' ModernBERT-large
config: 395M parameters, 28 layers, 1024 hidden, 16 heads, GeGLU 2 x 2624; global
attention every third layer and 128-token windows, as base). Not reproduced: what the
paper changes for large besides its sizes (its learning rate and batch, and initialising
from base's weights); pass those as --config overrides.

Variant "16gb" (`--config configs/pretrain_modernbert_large.py:16gb`), for accelerators
with 16 GiB each: phase 1 at seq_len 512 (154 masked positions, 30%) with twice the rows
per batch (the same 4.7M tokens), bfloat16 compute (float32 parameters, optimizer state
and loss), the layers under `nn.scan` and rematerialised in the backward pass
(remat_policy "full": each layer keeps only its input), and 16 rows per device per
microbatch. It is set for one device (576 microbatches of 16); on N devices set
--config.grad_accum_steps=9216/(16 N). Compiled for one device (on CPU) its step holds
about 9.6 GiB (tests/test_recipes.py; 13.3 GiB at 32 rows). Over more devices --config.mesh.fsdp=-1
shards parameters, gradients and optimizer state (about 6.3 GB whole) over the devices
instead of replicating them, which leaves room for more rows per device.
"""

import os
import runpy

_BASE = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain_modernbert_base.py"))
ROWS_PER_DEVICE_16GB = 16


def get_config(phase: str = "1024"):
    config = _BASE["get_config"]("1024" if phase == "16gb" else phase)
    config.model.update(
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        intermediate_size=2624,
    )
    if phase == "16gb":
        config.seq_len = 512
        config.global_batch_size *= 2  # 9216 rows of 512: the same tokens per batch
        config.data.max_predictions_per_seq = 154  # 30% of 512, rounded up
        config.grad_accum_steps = config.global_batch_size // ROWS_PER_DEVICE_16GB  # one device
        config.model.update(dtype="bfloat16", scan_layers=True, remat_policy="full")
    return config
