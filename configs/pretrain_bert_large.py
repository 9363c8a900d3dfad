"""BERT-Large pretraining as published: 340M parameters (24 layers, 1024 hidden, 16
heads), otherwise the BERT-Base recipe: 1M steps at batch 256, AdamW lr 1e-4, 10k
warmup, linear decay, 90% of steps at seq_len 128 then 10% at 512 (see
pretrain_bert_base.py for the two-phase commands). For large batches (e.g. 32k as in
You et al. 2019) use --config.optimizer=lamb with a larger learning rate.
"""

from flaxft.config import default_config


def get_config():
    config = default_config()
    config.num_train_steps = 900_000
    config.global_batch_size = 256
    config.seq_len = 128
    config.learning_rate = 1e-4
    config.warmup_steps = 10_000
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.checkpoint_every_steps = 10_000
    config.data.max_predictions_per_seq = 20
    config.model.update(
        vocab_size=30522,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        scan_layers=True,  # one compiled layer body for 24 layers
    )
    return config
