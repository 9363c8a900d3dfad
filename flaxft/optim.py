"""Optimizers for encoders: AdamW, StableAdamW or LAMB; warmup then linear, cosine or
warmup-stable-decay schedules; global-norm clipping; weight decay (optionally decoupled from
the learning rate) off biases and LayerNorm parameters; layer-wise learning-rate decay; and
which parameters train (freezing).

Parameters are named by their "/"-joined paths (`encoder/layer_0/attention/query/kernel`).
The optimizer sees the trainable parameters only (`split`): frozen ones have no state."""

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from flaxft.errors import InputError

ADAPTER_PREFIX = "lora_"  # how adapter parameters' names start (LoRA's lora_a, lora_b)

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


def make_optimizer(config: ml_collections.ConfigDict,
                   lr_scales: Mapping[str, float | np.ndarray] | None = None) -> optax.GradientTransformation:
    """The configured optimizer, clipping first when `grad_clip_norm` > 0: AdamW or
    StableAdamW (fused_adamw), with weight decay decoupled from the learning rate when
    `decoupled_weight_decay`, or LAMB; each parameter's step times its `lr_scales` entry
    (`scale_updates`; layer-wise learning-rate decay)."""
    optimizer = _optimizer(config)
    return scale_updates(optimizer, lr_scales) if lr_scales else optimizer


def _optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
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


def scale_updates(tx: optax.GradientTransformation,
                  scales: Mapping[str, float | np.ndarray]) -> optax.GradientTransformation:
    """`tx` with the update of each parameter named in `scales` (by path) multiplied by its
    scale: a float, or an array broadcasting against the parameter ([n, 1, ...]: one scale
    per layer of a scanned stack). The whole step scales, weight decay included (as
    ELECTRA's layer-wise decay does). The state is `tx`'s, so checkpoints carry over."""

    def update(updates, state, params=None):
        updates, state = tx.update(updates, state, params)

        def one(key_path, u):
            scale = scales.get("/".join(str(k.key) for k in key_path))
            return u if scale is None else u * jnp.asarray(scale, u.dtype)

        return jax.tree_util.tree_map_with_path(one, updates), state

    return optax.GradientTransformation(tx.init, update)


Depth = Callable[[str, int], int | tuple[int, ...]]  # (path, num_layers) -> depth: `flaxft.models.Family.depth`


def layerwise_lr_scales(params: dict, depth: Depth, num_layers: int, decay: float) -> dict[str, float | np.ndarray]:
    """ELECTRA's layer-wise learning-rate decay: each parameter's learning rate is
    `decay ** (num_layers + 2 - depth(path, num_layers))` times the base, by path (depth 0:
    embeddings, l: layer l, num_layers + 1: pooler, num_layers + 2: heads, which keep the
    base rate). A stacked layer's depths (a tuple, one per layer of its leading axis) give
    an array [n, 1, ...] of scales. Empty when decay is 1 (off).

    params: the model's parameters (ShapeDtypeStructs will do)."""
    if decay == 1.0:
        return {}
    scales = {}
    for path, leaf in traverse_util.flatten_dict(params, sep="/").items():
        where = depth(path, num_layers)
        if isinstance(where, tuple):
            if len(where) != leaf.shape[0]:
                raise ValueError(f"{path}: {len(where)} layer depths for a stack of {leaf.shape[0]}")
            scales[path] = (decay ** (num_layers + 2 - np.asarray(where, np.float64))).astype(np.float32).reshape(
                (-1,) + (1,) * (leaf.ndim - 1))
        else:
            scales[path] = decay ** (num_layers + 2 - where)
    return scales


# ----------------------------------------------------------------------------- freezing


def trainable(freeze: str = "", adapters_only: bool = False,
              new_paths: frozenset[str] = frozenset()) -> Callable[[str], bool]:
    """Whether the parameter at a "/"-joined path trains.

    freeze: a regular expression; parameters whose path it matches (`re.search`) are held
        fixed ("" freezes nothing). InputError naming config.freeze when it does not compile.
    adapters_only: only adapters train (names starting with ADAPTER_PREFIX), and the
        parameters in `new_paths` (those init_from did not provide: a new head), LoRA's
        rule; `freeze` applies on top.
    """
    try:
        pattern = re.compile(freeze) if freeze else None
    except re.error as e:
        raise InputError(f"config.freeze {freeze!r} is not a regular expression ({e})") from None

    def trains(path: str) -> bool:
        if pattern is not None and pattern.search(path):
            return False
        return not adapters_only or path in new_paths or path.rsplit("/", 1)[-1].startswith(ADAPTER_PREFIX)

    return trains


def check_trainable(trains: Callable[[str], bool], params: dict, freeze: str) -> None:
    """InputError naming config.freeze when `freeze` matches none of `params`' paths, or when
    no parameter trains."""
    paths = list(traverse_util.flatten_dict(params, sep="/"))
    if freeze and not any(re.search(freeze, path) for path in paths):
        raise InputError(f"config.freeze {freeze!r} matches no parameter (paths look like {paths[0]})")
    if not any(trains(path) for path in paths):
        raise InputError(f"config.freeze {freeze!r} leaves no parameter to train")


def split(params: dict, trains: Callable[[str], bool] | None) -> tuple[dict, dict]:
    """(trainable, frozen): `params` (nested dicts, boxed or not) as two trees holding the
    leaves `trains` says yes and no to (by path); everything trains when `trains` is None."""
    if trains is None:
        return params, {}
    flat = traverse_util.flatten_dict(params, sep="/")
    trained = {path: leaf for path, leaf in flat.items() if trains(path)}
    frozen = {path: leaf for path, leaf in flat.items() if path not in trained}
    return traverse_util.unflatten_dict(trained, sep="/"), traverse_util.unflatten_dict(frozen, sep="/")


def merge(trainable_params: dict, frozen: dict) -> dict:
    """The whole parameter tree again from `split`'s two parts."""
    if not frozen:
        return trainable_params
    flat = traverse_util.flatten_dict(trainable_params, sep="/") | traverse_util.flatten_dict(frozen, sep="/")
    return traverse_util.unflatten_dict(flat, sep="/")


def for_model(config: ml_collections.ConfigDict, params: dict, depth: Depth, num_layers: int,
              new_paths: frozenset[str] = frozenset()
              ) -> tuple[optax.GradientTransformation, Callable[[str], bool], dict[str, float]]:
    """What a setup hands the loop for a model with `params` (ShapeDtypeStructs will do),
    `num_layers` layers and `depth` (its family's, see `layerwise_lr_scales`), from the
    config's `freeze`, `peft.method` and `layerwise_lr_decay` (InputError naming
    config.freeze when it cannot work):

    - the optimizer (`make_optimizer`), with layer-wise decay;
    - which parameters train (`trainable`; `new_paths`: those init_from did not provide;
      with LoRA only the adapters and those);
    - the learning-rate groups to log beside `learning_rate` (the heads' rate): name ->
      multiplier, {"embeddings": decay ** (num_layers + 2)} with layer-wise decay, else {}.
    """
    trains = trainable(config.freeze, adapters_only=config.peft.method == "lora", new_paths=new_paths)
    check_trainable(trains, params, config.freeze)
    decay = config.layerwise_lr_decay
    tx = make_optimizer(config, layerwise_lr_scales(params, depth, num_layers, decay))
    return tx, trains, ({"embeddings": decay ** (num_layers + 2)} if decay < 1 else {})
