"""BERT-Base pretraining as published (Devlin et al. 2018): 110M parameters, MLM + NSP,
1M steps at batch 256, AdamW lr 1e-4 with 10k warmup steps and linear decay, weight
decay 0.01, dropout 0.1, 15% masking with 80/10/10 replacement.

Two phases, as the paper trained: 90% of the steps at seq_len 128, then 10% at 512.
    phase 1: --config.seq_len=128 --config.num_train_steps=900000
    phase 2: --config.seq_len=512 --config.data.max_predictions_per_seq=80 \
             --config.num_train_steps=1000000   (same --workdir: resumes at step 900000)
Set --config.data.path and --config.data.tokenizer (a 30522-token uncased vocab) for a
real corpus; the defaults run on the offline corpus with a tokenizer trained on it.
"""

from flaxft.config import default_config


def get_config():
    config = default_config()
    config.num_train_steps = 900_000  # phase 1; see the docstring for phase 2
    config.global_batch_size = 256
    config.seq_len = 128
    config.learning_rate = 1e-4
    config.warmup_steps = 10_000
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.checkpoint_every_steps = 10_000
    config.data.max_predictions_per_seq = 20  # 15% of 128
    config.data.format = "bert"  # sentence pairs with next-sentence prediction
    config.model.vocab_size = 30522  # BERT's uncased WordPiece vocabulary
    return config  # model.* defaults are BERT-Base: 12 layers, 768 hidden, 12 heads
