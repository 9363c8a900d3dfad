"""ELECTRA-Small pretraining as published (Clark et al. 2020, ICLR; table 6 and the
google-research/electra code): a 14M-parameter discriminator (12 layers, hidden 256,
4 heads, MLP 1024, embeddings 128) and a generator 1/4 its width sharing its embeddings;
replaced-token detection with lambda 50, 15% masking, seq_len 128, batch 128, 1M steps,
AdamW lr 5e-4 with 10k warmup steps and linear decay, weight decay 0.01, dropout 0.1,
BERT's uncased WordPiece vocabulary.

Set --config.data.path and --config.data.tokenizer (a 30522-token uncased vocab) for a
real corpus; the defaults run on the offline corpus with a tokenizer trained on it.
"""

from flaxft.config import default_config, model_defaults


def get_config():
    config = default_config()
    config.num_train_steps = 1_000_000
    config.global_batch_size = 128
    config.seq_len = 128
    config.learning_rate = 5e-4
    config.warmup_steps = 10_000
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.checkpoint_every_steps = 10_000
    config.data.format = "roberta"  # no next-sentence prediction
    config.data.max_predictions_per_seq = 20  # 15% of 128
    config.pretraining.discriminator_weight = 50.0
    config.model = model_defaults("electra")  # ELECTRA-Small's discriminator
    config.model.vocab_size = 30522
    config.model.generator_size = 0.25
    return config
