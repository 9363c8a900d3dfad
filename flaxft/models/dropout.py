"""Dropout with cheap random masks.

jax draws random bits with Threefry-2x32. On CPU its lowering runs the 20 rounds as a
5-step while loop, one pass over the whole array per step; written out as straight-line
integer ops, XLA fuses the hash with the mask and the multiply into one loop (what that
buys is in the README's benchmark section).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))  # Threefry-2x32, Salmon et al. 2011
_KEY_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(k1: Array, k2: Array, x1: Array, x2: Array) -> tuple[Array, Array]:
    """The 20-round Threefry-2x32 hash of the counter pairs (x1, x2) under key (k1, k2),
    unrolled. All uint32; k1, k2 scalars, x1, x2 and both results of one shape."""
    keys = (k1, k2, k1 ^ k2 ^ _KEY_PARITY)
    x1, x2 = x1 + keys[0], x2 + keys[1]
    for block in range(5):
        for r in _ROTATIONS[block % 2]:
            x1 = x1 + x2
            x2 = ((x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r))) ^ x1
        x1 = x1 + keys[(block + 1) % 3]
        x2 = x2 + keys[(block + 2) % 3] + np.uint32(block + 1)
    return x1, x2


def random_bits16(key: Array, shape: tuple[int, ...]) -> Array:
    """uint16 random bits of `shape`: for a Threefry key, the same numbers as
    `jax.random.bits(key, shape, jnp.uint16)` (jax's default, partitionable Threefry:
    one hash per element, counter = flat index); other key kinds go to jax.random."""
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    impl = str(jax.random.key_impl(key)) if typed else jax.config.jax_default_prng_impl
    size = int(np.prod(shape))
    if "threefry" not in impl or not jax.config.jax_threefry_partitionable or size >= 2**32:
        return jax.random.bits(key, shape, jnp.uint16)
    k1, k2 = jax.random.key_data(key) if typed else key
    index = jax.lax.iota(np.uint32, size).reshape(shape)
    b1, b2 = threefry2x32(k1, k2, jnp.zeros_like(index), index)
    return (b1 ^ b2).astype(jnp.uint16)


def dropout(x: Array, rate: float, rng: Array) -> Array:
    """Inverted dropout from 16 random bits per element: an element is dropped when its
    bits fall below round(rate * 2^16), so the rate is `rate` to within 2^-17, and kept
    elements are scaled by the exact inverse of the keep probability. Same shape as x."""
    if round(rate * 65536) == 0:
        return x
    keep, scale = keep_mask(rate, rng, x.shape)
    return jnp.where(keep, x * scale, 0).astype(x.dtype)


def keep_mask(rate: float, rng: Array, shape: tuple[int, ...]) -> tuple[Array, float]:
    """`dropout`'s mask (True: kept) of `shape` and the factor kept elements get."""
    threshold = round(rate * 65536)
    return random_bits16(rng, shape) >= jnp.uint16(threshold), 65536 / (65536 - threshold)


class Dropout(nn.Module):
    """`nn.Dropout` drawing its mask with `dropout` (from the "dropout" rng)."""

    rate: float

    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        return dropout(x, self.rate, self.make_rng("dropout"))
