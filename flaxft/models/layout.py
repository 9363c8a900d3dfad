"""Encoder parameter layouts: unrolled (`layer_0` ... `layer_{n-1}`) or scanned (`layers`,
every leaf with a leading layer axis). The numbers are the same; only the tree differs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from flaxft.errors import InputError
from flaxft.models.heads import init_params


def with_layer_layout(params: dict, scan_layers: bool) -> dict:
    """Returns `params` (a model's params, encoder under params["bert"]["encoder"]) in the
    requested layout, converting if it is in the other one. Leaves must be plain arrays."""
    encoder = params["bert"]["encoder"]
    if scan_layers == ("layers" in encoder):
        return params
    if scan_layers:
        n = len(encoder)
        layers = [encoder[f"layer_{i}"] for i in range(n)]
        new_encoder = {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
    else:
        stacked = encoder["layers"]
        n = jax.tree.leaves(stacked)[0].shape[0]
        new_encoder = {f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)}
    return {**params, "bert": {**params["bert"], "encoder": new_encoder}}


def adapt_params(params: dict, model, seed: int = 0) -> dict:
    """`params` (any flaxft architecture, either layout) refitted to `model`.

    Every encoder parameter `model` needs must be in `params` with the same shape; head
    parameters `params` lacks (a new head on a pretrained encoder) are initialised afresh
    from `seed`; parameters `model` has no use for (another head) are dropped.
    Raises InputError naming the first missing or misshapen parameter.
    """
    params = with_layer_layout(nn.meta.unbox(params), model.config.scan_layers)
    source = traverse_util.flatten_dict(params)
    target = traverse_util.flatten_dict(jax.eval_shape(lambda: nn.meta.unbox(init_params(model, jax.random.key(seed)))))
    missing = [path for path in target if path not in source]
    if any(path[0] == "bert" and path[1] != "pooler" for path in missing):
        first = next(p for p in missing if p[0] == "bert" and p[1] != "pooler")
        raise InputError(f"the checkpoint has no parameter {'/'.join(first)}")
    fresh = traverse_util.flatten_dict(nn.meta.unbox(init_params(model, jax.random.key(seed)))) if missing else {}
    out = {}
    for path, want in target.items():
        value = source.get(path, fresh.get(path))
        if tuple(value.shape) != tuple(want.shape):
            raise InputError(
                f"parameter {'/'.join(path)} has shape {tuple(value.shape)} in the checkpoint but the "
                f"model needs {tuple(want.shape)}"
            )
        out[path] = jnp.asarray(value, want.dtype)
    return traverse_util.unflatten_dict(out)
