"""BERT-Large pretraining as published: 340M parameters (24 layers, 1024 hidden, 16
heads), otherwise the BERT-Base recipe of pretrain_bert_base.py (1M steps at batch 256,
AdamW lr 1e-4, 10k warmup, linear decay, 90% of steps at seq_len 128 then 10% at 512:
see its docstring for the two-phase commands). For large batches (e.g. 32k as in You et
al. 2019) use --config.optimizer=lamb with a larger learning rate.
"""

import os
import runpy

_BASE = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain_bert_base.py"))


def get_config():
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
    return config
