"""The demo: a 2-layer BERT that visibly learns on the offline corpus in a few minutes
on 2 CPU cores (`make demo`)."""

from flaxft.config import default_config


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
    config.data.max_predictions_per_seq = 10  # 15% of 64
    config.model.update(
        vocab_size=8192,  # WordPiece trained on the corpus at this size
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=512,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,  # a model this small underfits: no dropout (as MosaicBERT
        attention_probs_dropout_prob=0.0,  # and ModernBERT train); bert_base keeps BERT's 0.1
    )
    return config
