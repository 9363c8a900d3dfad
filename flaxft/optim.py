"""Optimizers for encoders: AdamW, StableAdamW or LAMB; warmup then linear, cosine or
warmup-stable-decay schedules; global-norm clipping; weight decay (optionally decoupled from
the learning rate) off biases and LayerNorm parameters."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from flaxft.errors import InputError

NO_DECAY_LEAVES = ("bias", "scale")  # Dense/LayerNorm biases and LayerNorm scales


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """The learning rate at each step (a count of updates applied, int32 []): linear warmup
    from 0 to `learning_rate` over `warmup_steps`, then by `lr_schedule`:

    - "linear" / "cosine": decay to `end_learning_rate` at `num_train_steps`;
    - "wsd" (warmup-stable-decay): `learning_rate` until the last `decay_steps` steps, which
      decay to `end_learning_rate` at `num_train_steps` with Hägele et al.'s (2024) "1-sqrt"
      shape, end + (peak - end) * (1 - sqrt(t / decay_steps)), t counting from the decay's
      first step. Raises InputError when warmup and decay do not fit into num_train_steps
      (which fine-tuning may only know here, from task.epochs)."""
    if config.lr_schedule == "wsd":
        return _wsd_schedule(config)
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


def _wsd_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    warmup, decay_steps, total = config.warmup_steps, config.decay_steps, config.num_train_steps
    if decay_steps < 1 or warmup + decay_steps > total:
        raise InputError(f"config.lr_schedule 'wsd' needs 0 < config.decay_steps ({decay_steps}) and "
                         f"config.warmup_steps ({warmup}) + decay_steps <= config.num_train_steps ({total})")
    peak, end = config.learning_rate, config.end_learning_rate

    def decay(step):  # step 0 is the decay's first step; end_learning_rate from decay_steps on
        t = jnp.clip(jnp.asarray(step, jnp.float32), 0, decay_steps) / decay_steps
        return end + (peak - end) * (1 - jnp.sqrt(t))

    schedules, boundaries = [], []  # the phases that have steps, and where each after the first starts
    if warmup > 0:
        schedules.append(optax.linear_schedule(0.0, peak, warmup))
    if total - decay_steps > warmup:  # a stable phase
        boundaries += [warmup] if schedules else []
        schedules.append(optax.constant_schedule(peak))
    if not schedules:
        return decay
    return optax.join_schedules([*schedules, decay], [*boundaries, total - decay_steps])


def weight_decay_mask(params) -> dict:
    """True for the leaves weight decay applies to: kernels and embeddings."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) not in NO_DECAY_LEAVES, params
    )


class AdamWState(NamedTuple):
    """count: updates applied so far (int32 []); mu, nu: first and second moments, shaped
    (and, when params are logically boxed, named) like the parameters."""

    count: jax.Array
    mu: Any
    nu: Any


def fused_adamw(
    learning_rate: optax.Schedule,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    mask: Callable[[Any], Any],
    clip_norm: float = 0.0,
    stable: bool = False,
    decoupled_weight_decay: bool = False,
    peak_learning_rate: float = 0.0,
) -> optax.GradientTransformation:
    """`optax.chain(optax.clip_by_global_norm(clip_norm), optax.adamw(...))` computed as one
    elementwise function per parameter (clip scale, both moments, bias correction, weight
    decay where `mask(params)` is True, learning rate), so XLA reads each gradient and
    moment once instead of materialising every stage (what it saves: the README's benchmark
    section). No clipping when clip_norm <= 0. Same numbers as optax
    (tests/test_optim.py).

    stable: StableAdamW (Wortsman et al. 2023, arXiv:2304.13013, Algorithm 2), AdamW with
    AdaFactor's update clipping: each tensor's learning rate (for its Adam step and its
    weight decay alike) is lr_t / max(1, RMS_t), RMS_t = sqrt(mean(g_t^2 / max(v_t, eps^2)))
    over the tensor. g_t is the gradient after global-norm clipping; v_t is the updated,
    bias-corrected second moment nu / (1 - b2^t), the paper's u_t: its moments use debiased
    betas b(1 - b^(t-1)) / (1 - b^t), which gives exactly the bias-corrected average (so
    RMS_t = 1 at t = 1, and about 1 while the second moment keeps up with the gradients).
    The eps^2 floor, off the paper's formula, keeps zero gradients finite (optimi's
    StableAdamW, which ModernBERT trains with, has the same).

    decoupled_weight_decay: weight decay decoupled from the learning rate's size (Loshchilov
    & Hutter's form, as Composer's DecoupledAdamW): p <- p - weight_decay * (lr_t /
    peak_learning_rate) * p follows the schedule's shape only, instead of optax's (and
    PyTorch's) p <- p - lr_t * weight_decay * p. With `stable`, lr_t is the tensor's
    RMS-scaled rate here too (as optimi's StableAdamW(decouple_lr=True) does).

    The state (count, mu, nu) is AdamW's in every variant, so checkpoints carry over."""

    if decoupled_weight_decay and not peak_learning_rate > 0:
        raise ValueError(f"decoupled weight decay needs the peak learning rate, got {peak_learning_rate}")

    def init(params) -> AdamWState:
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return AdamWState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

    def update(grads, state: AdamWState, params):
        count = optax.safe_int32_increment(state.count)
        scale = 1.0
        if clip_norm > 0:
            norm = optax.tree.norm(grads)
            scale = jnp.where(norm < clip_norm, 1.0, clip_norm / norm)
        lr = learning_rate(state.count)
        correction1 = 1 - b1 ** count.astype(jnp.float32)
        correction2 = 1 - b2 ** count.astype(jnp.float32)

        def one(g, m, v, p, decays: bool):
            g = g * scale
            m = (1 - b1) * g + b1 * m
            v = (1 - b2) * g * g + b2 * v
            v_hat = v / correction2.astype(v.dtype)
            u = (m / correction1.astype(m.dtype)) / (jnp.sqrt(v_hat) + eps)
            step_lr = lr
            if stable:  # the tensor's one reduction: its RMS of g^2 / v_hat
                rms = jnp.sqrt(jnp.mean(g * g / jnp.maximum(v_hat, eps * eps)))
                step_lr = lr / jnp.maximum(1.0, rms)
            if decays and decoupled_weight_decay:
                return -step_lr * u - weight_decay * (step_lr / peak_learning_rate) * p, m, v
            if decays:
                u = u + weight_decay * p
            return -step_lr * u, m, v

        out = jax.tree.map(one, grads, state.mu, state.nu, params, mask(params))
        updates, mu, nu = (jax.tree.map(lambda o, i=i: o[i], out, is_leaf=lambda o: isinstance(o, tuple))
                           for i in range(3))
        return updates, AdamWState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The configured optimizer, clipping first when `grad_clip_norm` > 0: AdamW or
    StableAdamW (fused_adamw), with weight decay decoupled from the learning rate when
    `decoupled_weight_decay`, or LAMB."""
    schedule = learning_rate_schedule(config)
    kwargs = dict(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                  weight_decay=config.weight_decay, mask=weight_decay_mask)
    if config.optimizer in ("adamw", "stable_adamw"):
        return fused_adamw(schedule, clip_norm=config.grad_clip_norm, stable=config.optimizer == "stable_adamw",
                           decoupled_weight_decay=config.decoupled_weight_decay,
                           peak_learning_rate=config.learning_rate, **kwargs)
    optimizer = optax.lamb(schedule, **kwargs)
    if config.grad_clip_norm > 0:
        optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optimizer)
    return optimizer
