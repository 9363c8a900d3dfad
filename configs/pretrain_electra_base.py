"""ELECTRA-Base pretraining as published (Clark et al. 2020, ICLR; table 6): a 110M-
parameter discriminator (BERT-Base's shape, embeddings 768) and a generator 1/3 its
width sharing its embeddings; replaced-token detection with lambda 50, 15% masking,
seq_len 512, batch 256, 766k steps, AdamW lr 2e-4 with 10k warmup steps and linear decay,
weight decay 0.01, dropout 0.1, BERT's uncased WordPiece vocabulary.

Set --config.data.path and --config.data.tokenizer (a 30522-token uncased vocab) for a
real corpus; the defaults run on the offline corpus with a tokenizer trained on it.
"""

from flaxft.config import default_config, model_defaults


def get_config():
    config = default_config()
    config.num_train_steps = 766_000
    config.global_batch_size = 256
    config.seq_len = 512
    config.learning_rate = 2e-4
    config.warmup_steps = 10_000
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.checkpoint_every_steps = 10_000
    config.data.format = "roberta"  # no next-sentence prediction
    config.data.max_predictions_per_seq = 77  # 15% of 512
    config.model = model_defaults("electra")
    config.model.update(vocab_size=30522, embedding_size=768, hidden_size=768, num_attention_heads=12,
                        intermediate_size=3072, generator_size=1 / 3)
    return config
