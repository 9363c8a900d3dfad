"""RoBERTa-Base pretraining as published (Liu et al. 2019, arXiv:1907.11692, table 9):
125M parameters, masked LM on full sentences packed to 512 tokens (no NSP), dynamic
masking, batch 8k sequences, 500k steps, AdamW lr 6e-4 (beta2 0.98, eps 1e-6) with 24k
warmup steps and linear decay, weight decay 0.01, dropout 0.1, a 50,265-token byte-level
BPE vocabulary (GPT-2's).

Set --config.data.path and --config.data.tokenizer (roberta-base's tokenizer folder) for
a real corpus; the defaults run on the offline corpus with a byte-level BPE trained on it.
On fewer accelerators, --config.grad_accum_steps keeps the 8k batch.
"""

from flaxft.config import default_config, model_defaults


def get_config():
    config = default_config()
    config.num_train_steps = 500_000
    config.global_batch_size = 8192
    config.seq_len = 512
    config.learning_rate = 6e-4
    config.warmup_steps = 24_000
    config.adam_b2 = 0.98
    config.adam_eps = 1e-6
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.checkpoint_every_steps = 10_000
    config.data.format = "roberta"
    config.data.max_predictions_per_seq = 77  # 15% of 512
    config.model = model_defaults("roberta")  # roberta-base: 12 layers, 768 hidden, 12 heads, 514 positions
    return config
