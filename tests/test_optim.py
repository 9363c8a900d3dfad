"""The fused AdamW against optax's clip + adamw chain, step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxft import optim


def _tree(rng, scale=1.0):
    return {
        "layer": {"kernel": jnp.asarray(rng.normal(size=(6, 5)) * scale, jnp.float32),
                  "bias": jnp.asarray(rng.normal(size=(5,)) * scale, jnp.float32)},
        "LayerNorm": {"scale": jnp.asarray(1 + rng.normal(size=(5,)) * scale, jnp.float32)},
    }


@pytest.mark.parametrize("clip_norm, grad_scale", [(1.0, 1.0), (1.0, 1e-3), (0.0, 1.0)])
def test_fused_adamw_matches_optax(clip_norm, grad_scale):
    """Clipping active (large gradients) and inactive (small), and no clipping: params and
    moments track optax's chain within float32 rounding for 6 steps of a warmup schedule,
    weight decay only on kernels."""
    rng = np.random.default_rng(0)
    schedule = optax.linear_schedule(0.0, 1e-2, 3)
    kwargs = dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, mask=optim.weight_decay_mask)
    reference = optax.adamw(schedule, **kwargs)
    if clip_norm > 0:
        reference = optax.chain(optax.clip_by_global_norm(clip_norm), reference)
    fused = optim.fused_adamw(schedule, clip_norm=clip_norm, **kwargs)
    params_ref = params_fused = _tree(rng)
    state_ref, state_fused = reference.init(params_ref), fused.init(params_fused)
    for _ in range(6):
        grads = _tree(rng, 3.0 * grad_scale)
        updates, state_ref = jax.jit(reference.update)(grads, state_ref, params_ref)
        params_ref = optax.apply_updates(params_ref, updates)
        updates, state_fused = jax.jit(fused.update)(grads, state_fused, params_fused)
        params_fused = optax.apply_updates(params_fused, updates)
    adam_ref = state_ref[1][0] if clip_norm > 0 else state_ref[0]
    for got, want in [(params_fused, params_ref), (state_fused.mu, adam_ref.mu), (state_fused.nu, adam_ref.nu)]:
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-7)
    assert int(state_fused.count) == 6
    # Weight decay reached kernels only: with zero gradients a bias stays put.
    zero = jax.tree.map(jnp.zeros_like, params_fused)
    fresh = fused.init(params_fused)
    updates, _ = fused.update(zero, fresh._replace(count=jnp.asarray(5, jnp.int32)), params_fused)
    assert float(jnp.abs(updates["layer"]["bias"]).max()) == 0.0
    assert float(jnp.abs(updates["layer"]["kernel"]).max()) > 0.0
