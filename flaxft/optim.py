"""Optimizers for BERT: AdamW or LAMB, warmup then linear or cosine decay, global-norm
clipping, and no weight decay on biases or LayerNorm parameters."""

import jax
import ml_collections
import optax

NO_DECAY_LEAVES = ("bias", "scale")  # Dense/LayerNorm biases and LayerNorm scales


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then linear or cosine
    decay to `end_learning_rate` at `num_train_steps`."""
    warmup = min(config.warmup_steps, config.num_train_steps)
    decay_steps = max(config.num_train_steps - warmup, 1)
    if config.lr_schedule == "cosine":
        decay = optax.cosine_decay_schedule(
            config.learning_rate, decay_steps, alpha=config.end_learning_rate / config.learning_rate
        )
    else:
        decay = optax.linear_schedule(config.learning_rate, config.end_learning_rate, decay_steps)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, config.learning_rate, warmup), decay], [warmup])


def weight_decay_mask(params) -> dict:
    """True for the leaves weight decay applies to: kernels and embeddings."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) not in NO_DECAY_LEAVES, params
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The configured optimizer, clipping first when `grad_clip_norm` > 0."""
    schedule = learning_rate_schedule(config)
    kwargs = dict(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                  weight_decay=config.weight_decay, mask=weight_decay_mask)
    optimizer = optax.lamb(schedule, **kwargs) if config.optimizer == "lamb" else optax.adamw(schedule, **kwargs)
    if config.grad_clip_norm > 0:
        optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optimizer)
    return optimizer
