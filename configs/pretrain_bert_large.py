"""BERT-Large pretraining as published: 340M parameters (24 layers, 1024 hidden, 16
heads), otherwise the BERT-Base recipe of pretrain_bert_base.py (1M steps at batch 256,
AdamW lr 1e-4, 10k warmup, linear decay, 90% of steps at seq_len 128 then 10% at 512:
see its docstring for the two-phase commands). For large batches (e.g. 32k as in You et
al. 2019) use --config.optimizer=lamb with a larger learning rate.

Variant "16gb" (`--config configs/pretrain_bert_large.py:16gb`): phase 2's shape (seq_len
512, 80 masked positions) on accelerators with 16 GiB each: bfloat16 compute (float32
parameters, optimizer state and loss), the layers under `nn.scan` and rematerialised in
the backward pass (remat_policy "full": each layer keeps only its input), and 32 rows
per device per microbatch, the batch of 256 made of grad_accum_steps microbatches. It is
set for one device (8 microbatches of 32); on N devices set
--config.grad_accum_steps=256/(32 N) (N = 8: 1). Compiled for one device (on CPU) its step holds
about 10.3 GiB (tests/test_recipes.py; 69 GiB without remat). Over more devices
--config.mesh.fsdp=-1 shards parameters, gradients and optimizer state (about 5.4 GB
whole) over the devices instead of replicating them, which leaves room for more rows
per device.
"""

import os
import runpy

_BASE = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain_bert_base.py"))
ROWS_PER_DEVICE_16GB = 32


def get_config(variant: str = ""):
    if variant not in ("", "16gb"):
        raise ValueError(f"variant {variant!r} is not '' or '16gb'")
    config = _BASE["get_config"]()
    config.model.update(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
    )
    # Layers unrolled: on CPU the scanned stack was slower and larger (README, Benchmarks),
    # and only the unrolled last layer can skip unmasked rows. --config.model.scan_layers=true
    # compiles one layer body instead where compile time matters more.
    if variant == "16gb":
        config.num_train_steps = 1_000_000  # resumes phase 1's workdir at step 900000
        config.seq_len = 512
        config.data.max_predictions_per_seq = 80  # 15% of 512
        config.grad_accum_steps = config.global_batch_size // ROWS_PER_DEVICE_16GB  # one device
        config.model.update(dtype="bfloat16", scan_layers=True, remat_policy="full")
    return config
