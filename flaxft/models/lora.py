"""LoRA adapters as parameter trees: which kernels carry one, and folding them into their
kernels (the adapters themselves live in `flaxft.models.layers.Dense`).

A dense layer with an adapter holds `kernel` (*lead, *contracted, *features), `lora_a`
(*lead, *contracted, R) and `lora_b` (*lead, R, *features); *lead is the layer axis of a
scanned stack, or nothing.
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from flaxft.models.layers import LORA_PARAMS
from flaxft.models.params import abstract_params


def adapted_kernels(model: nn.Module) -> list[tuple[str, ...]]:
    """Paths of the kernels of `model` that carry a LoRA adapter (none without LoRA), in
    `model`'s layer layout."""
    flat = traverse_util.flatten_dict(abstract_params(model))
    return [path[:-1] + ("kernel",) for path in flat if path[-1] == "lora_a"]


def delta(a: jax.Array, b: jax.Array, kernel_ndim: int) -> jax.Array:
    """A B of one adapter (a: [*lead, *contracted, R], b: [*lead, R, *features]) in the
    kernel's shape [*lead, *contracted, *features], float32."""
    lead = a.ndim + b.ndim - 2 - kernel_ndim
    r = a.shape[-1]
    a_LKR = jnp.asarray(a, jnp.float32).reshape(*a.shape[:lead], -1, r)
    b_LRF = jnp.asarray(b, jnp.float32).reshape(*b.shape[:lead], r, -1)
    d_LKF = jnp.matmul(a_LKR, b_LRF, precision=jax.lax.Precision.HIGHEST)
    return d_LKF.reshape(*a.shape[:-1], *b.shape[lead + 1:])


def merge(model: nn.Module, params: Mapping) -> tuple[nn.Module, dict]:
    """(the model without LoRA, params with every adapter folded into its kernel):
    W' = W + (lora_alpha / R) A B, in W's dtype; lora_a and lora_b dropped. Both layer
    layouts; `model` and `params` as they are when `model` has no LoRA. The merged model
    computes what `model` computes with its adapters (LoRA dropout aside, which only
    training applies)."""
    cfg = model.config
    if not cfg.lora_rank:
        return model, dict(params)
    scale = cfg.lora_alpha / cfg.lora_rank
    flat = traverse_util.flatten_dict(nn.meta.unbox(params))
    merged = {path: value for path, value in flat.items() if path[-1] not in LORA_PARAMS}
    for path in flat:
        if path[-1] == "lora_a":
            layer = path[:-1]
            kernel = flat[layer + ("kernel",)]
            update = scale * delta(flat[path], flat[layer + ("lora_b",)], kernel.ndim)
            merged[layer + ("kernel",)] = (jnp.asarray(kernel, jnp.float32) + update).astype(kernel.dtype)
    plain = model.clone(config=cfg.replace(**{name: getattr(type(cfg), name) for name in cfg.LORA_FIELDS}))
    return plain, traverse_util.unflatten_dict(merged)

