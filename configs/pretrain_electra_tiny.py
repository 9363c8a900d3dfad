"""Offline demo of ELECTRA pretraining (replaced-token detection): a 2-layer discriminator
and a generator half its width learn together on the offline corpus in a few minutes on
2 CPU cores. The tokenizer is a WordPiece trained on the corpus, as in `pretrain_tiny.py`.

    python -m flaxft.main --config configs/pretrain_electra_tiny.py --workdir runs/electra
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
    config.data.format = "roberta"  # ELECTRA has no next-sentence head: full sentences, packed
    config.data.max_predictions_per_seq = 10  # 15% of 64
    config.model = model_defaults("electra")
    config.model.update(
        vocab_size=8192,  # WordPiece trained on the corpus at this size
        embedding_size=64,  # narrower than hidden_size, as ELECTRA-Small's (128 vs 256)
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=512,
        max_position_embeddings=128,
        generator_size=0.5,  # a 64-wide generator (ELECTRA-Small's ratio is 1/4; a tiny one needs more)
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return config
