"""ModernBERT-base pretraining as published (Warner et al. 2024, "Smarter, Better, Faster,
Longer", arXiv:2412.13663, section 2.2 and appendix A): 149M parameters (22 layers, 768
hidden, GeGLU 2 x 1152, global attention every third layer, sliding windows of 128
tokens between), masked LM at a 30% masking rate with no NSP, sequences packed (no
padding, attention kept inside each), StableAdamW (lr 8e-4, betas 0.9 / 0.98, eps 1e-6,
decoupled weight decay 1e-5, no gradient clipping), a warmup-stable-decay ("trapezoidal")
schedule with 1-sqrt decay, and two phases:

- phase "1024" (the default): 1.7T tokens at 1024 context, every rotary theta 10,000,
  a 3B-token warmup, then the constant peak learning rate;
- phase "8192", context extension from phase 1's last checkpoint: 300B tokens at 8192
  context with the global layers' rotary theta raised to 160,000 (the released
  checkpoint's), 250B at a constant 3e-4 and the last 50B decayed by 1-sqrt.

    python -m flaxft.main --config configs/pretrain_modernbert_base.py --workdir runs/mb1024 \
        --config.data.path=CORPUS --config.data.tokenizer=MODERNBERT_TOKENIZER_DIR
    python -m flaxft.main --config configs/pretrain_modernbert_base.py:8192 --workdir runs/mb8192 \
        --config.init_from=runs/mb1024 --config.data.path=CORPUS --config.data.tokenizer=MODERNBERT_TOKENIZER_DIR

The paper gives lengths in tokens; the steps here keep its 4,608 x 1024 = 4.7M tokens per
batch in both phases (576 x 8192 when extending). Not reproduced: the batch-size warmup
(768 -> 4,608 sequences over the first 50B tokens; flaxft's batch is fixed per run) and
the 0.1 dropout the paper's training code puts after the attention output projection
(Hugging Face's config has one `attention_dropout` for both the attention probabilities
and that output, so it stays 0 as in the released checkpoint). The tokenizer is
ModernBERT's (a 50,368-token byte-level BPE: `answerdotai/ModernBERT-base`'s folder); its
special ids are the model's defaults below.
"""

from flaxft.config import default_config, model_defaults

TOKENS_PER_BATCH = 4608 * 1024


def get_config(phase: str = "1024"):
    if phase not in ("1024", "8192"):
        raise ValueError(f"phase {phase!r} is not '1024' or '8192'")
    config = default_config()
    config.optimizer = "stable_adamw"
    config.adam_b1, config.adam_b2, config.adam_eps = 0.9, 0.98, 1e-6
    config.weight_decay = 1e-5
    config.decoupled_weight_decay = True
    config.grad_clip_norm = 0.0  # StableAdamW's per-tensor update clipping instead
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.checkpoint_every_steps = 5_000
    config.data.format = "roberta"  # full sentences packed, no NSP
    config.data.mask_rate = 0.3
    config.model = model_defaults("modernbert")  # ModernBERT-base
    if phase == "1024":
        config.seq_len = 1024
        config.global_batch_size = 4608
        config.num_train_steps = round(1.7e12 / TOKENS_PER_BATCH)
        config.learning_rate = 8e-4
        config.warmup_steps = round(3e9 / TOKENS_PER_BATCH)
        config.lr_schedule = "linear"
        config.end_learning_rate = config.learning_rate  # constant after warmup: the decay comes in phase 8192
        config.data.max_predictions_per_seq = 308  # 30% of 1024, rounded up
        config.model.global_rope_theta = 10_000.0
    else:
        config.seq_len = 8192
        config.global_batch_size = 576
        config.num_train_steps = round(300e9 / TOKENS_PER_BATCH)
        config.learning_rate = 3e-4
        config.warmup_steps = 0
        config.lr_schedule = "wsd"
        config.decay_steps = round(50e9 / TOKENS_PER_BATCH)
        config.data.max_predictions_per_seq = 2458  # 30% of 8192, rounded up
        config.model.global_rope_theta = 160_000.0
    return config
