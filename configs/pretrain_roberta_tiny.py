"""Offline demo of RoBERTa pretraining: a 2-layer RoBERTa learns masked language modelling
on the offline corpus in a few minutes on 2 CPU cores, with a byte-level BPE tokenizer
trained on the corpus (`data.tokenizer` empty) and full sentences packed, no NSP.

    python -m flaxft.main --config configs/pretrain_roberta_tiny.py --workdir runs/roberta
"""

from flaxft.config import default_config, model_defaults


def get_config():
    config = default_config()
    config.num_train_steps = 600
    config.global_batch_size = 32
    config.seq_len = 64
    config.learning_rate = 2e-3  # small models take a large step
    config.warmup_steps = 60
    config.log_every_steps = 10
    config.eval_every_steps = 200
    config.eval_batches = 4
    config.checkpoint_every_steps = 200
    config.data.format = "roberta"  # full sentences, packed; RoBERTa has no next-sentence head
    config.data.max_predictions_per_seq = 10  # 15% of 64
    config.model = model_defaults("roberta")
    config.model.update(
        vocab_size=8192,  # byte-level BPE trained on the corpus at this size
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=512,
        max_position_embeddings=130,  # positions start after the padding index (1): 128 tokens
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return config
