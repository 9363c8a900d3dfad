"""Offline demo of ModernBERT pretraining: a 4-layer ModernBERT (rotary attention, global
on layers 0 and 3, sliding windows of 32 tokens between, GeGLU, pre-LayerNorm without
biases) learns masked language modelling with ModernBERT's 30% masking on the offline
corpus in a few minutes on 2 CPU cores, with a byte-level BPE tokenizer trained on the
corpus (`data.tokenizer` empty), full sentences packed (no NSP; attention and rotary
positions stay inside each packed sequence), and ModernBERT's optimizer: StableAdamW,
decoupled weight decay, warmup-stable-decay.

    python -m flaxft.main --config configs/pretrain_modernbert_tiny.py --workdir runs/modernbert
"""

from flaxft.config import default_config, model_defaults


def get_config():
    config = default_config()
    config.num_train_steps = 600
    config.global_batch_size = 32
    config.seq_len = 64
    config.learning_rate = 2e-3  # small models take a large step
    config.warmup_steps = 60
    config.lr_schedule = "wsd"  # ModernBERT's optimizer recipe (configs/pretrain_modernbert_base.py), shortened
    config.decay_steps = 150
    config.optimizer = "stable_adamw"
    config.adam_b2 = 0.98
    config.weight_decay = 1e-5
    config.decoupled_weight_decay = True
    config.grad_clip_norm = 0.0
    config.log_every_steps = 10
    config.eval_every_steps = 200
    config.eval_batches = 4
    config.checkpoint_every_steps = 200
    config.data.format = "roberta"  # full sentences, packed; ModernBERT has no next-sentence head
    config.data.mask_rate = 0.3  # ModernBERT's masking rate
    config.data.max_predictions_per_seq = 20  # 30% of 64
    config.model = model_defaults("modernbert")
    config.model.update(
        vocab_size=8192,  # byte-level BPE trained on the corpus at this size
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=192,
        max_position_embeddings=128,
        local_attention=32,  # sliding layers see 16 tokens on either side
        pad_token_id=1,  # the trained tokenizer's <pad>, <s> and </s>
        bos_token_id=0,
        cls_token_id=0,
        eos_token_id=2,
        sep_token_id=2,
    )
    return config
