"""Encoder parameter layouts: unrolled (`layer_0` ... `layer_{n-1}`) or scanned (`layers`,
every leaf with a leading layer axis). The numbers are the same; only the tree differs."""

import jax
import jax.numpy as jnp


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
