"""flaxft.models.matmul: products in the compute dtype, and the CPU layout of 16-bit ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxft.models.matmul import (
    batched_matmul,
    batched_matmul_nt,
    batched_matmul_tn,
    fast_compute_dtype,
    float32_dots,
    matmul,
    matmul_transposed,
    rows_last,
)

BF16 = jnp.bfloat16


def _normal(rng, *shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)


@pytest.mark.parametrize("shape", [(6, 4), (7, 3), (1, 5), (2, 3, 12, 5), (4, 128, 384)])
def test_rows_last_is_the_transpose_of_the_last_two_dims(shape):
    a = _normal(np.random.default_rng(0), *shape)
    np.testing.assert_array_equal(jax.jit(rows_last)(a), jnp.swapaxes(a, -1, -2))


def _reference(x, w, bias=None):
    """The same product in float64 from the operands rounded to bfloat16."""
    y = np.asarray(x.astype(BF16), np.float64) @ np.asarray(w.astype(BF16), np.float64)
    return y if bias is None else y + np.asarray(bias, np.float64)


def test_bfloat16_matmul_and_its_gradients_match_float64_of_the_rounded_operands():
    """Forward within bfloat16's rounding of the float32 sum; dx in bfloat16, dw and the
    bias's gradient in the parameters' float32 (bias summed in float32)."""
    rng = np.random.default_rng(1)
    x, w, b, g = _normal(rng, 48, 20), _normal(rng, 20, 12), _normal(rng, 12), _normal(rng, 48, 12)
    y, vjp = jax.vjp(lambda x, w, b: matmul(x, w, BF16, b), x.astype(BF16), w, b)
    assert y.dtype == BF16
    np.testing.assert_allclose(np.asarray(y, np.float64), _reference(x, w, b), rtol=1e-2, atol=1e-2)
    dx, dw, db = vjp(g.astype(BF16))
    assert (dx.dtype, dw.dtype, db.dtype) == (BF16, jnp.float32, jnp.float32)
    g64 = np.asarray(g.astype(BF16), np.float64)
    np.testing.assert_allclose(np.asarray(dx, np.float64), g64 @ np.asarray(w.astype(BF16), np.float64).T,
                               rtol=1e-2, atol=2e-2)
    np.testing.assert_allclose(dw, np.asarray(x.astype(BF16), np.float64).T @ g64, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(db, g64.sum(0), rtol=1e-6, atol=1e-5)


def test_bfloat16_tied_decoder_product_and_its_gradients():
    rng = np.random.default_rng(2)
    x, e, g = _normal(rng, 10, 16), _normal(rng, 30, 16), _normal(rng, 10, 30)
    y, vjp = jax.vjp(lambda x, e: matmul_transposed(x, e, BF16), x.astype(BF16), e)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, _reference(x, e.T), rtol=1e-5, atol=1e-5)
    dx, de = vjp(g)
    assert (dx.dtype, de.dtype) == (BF16, jnp.float32)
    g64 = np.asarray(g.astype(BF16), np.float64)
    np.testing.assert_allclose(de, g64.T @ np.asarray(x.astype(BF16), np.float64), rtol=1e-5, atol=1e-4)


def test_float32_products_are_the_plain_ones():
    rng = np.random.default_rng(3)
    x, w, b = _normal(rng, 8, 5), _normal(rng, 5, 3), _normal(rng, 3)
    np.testing.assert_array_equal(matmul(x, w, jnp.float32, b), jnp.dot(x, w) + b)
    np.testing.assert_array_equal(matmul_transposed(x, w.T, jnp.float32), jnp.dot(x, w))
    a, c = _normal(rng, 2, 3, 6, 4), _normal(rng, 2, 3, 6, 5)
    np.testing.assert_allclose(batched_matmul_tn(a, c, jnp.float32), jnp.einsum("bnkx,bnkf->bnxf", a, c), atol=1e-6)
    np.testing.assert_allclose(batched_matmul(jnp.swapaxes(a, -1, -2), c, jnp.float32),
                               jnp.einsum("bnxk,bnkf->bnxf", jnp.swapaxes(a, -1, -2), c), atol=1e-6)
    np.testing.assert_allclose(batched_matmul_nt(a, a), jnp.einsum("bnxk,bnfk->bnxf", a, a), atol=1e-6)


def test_on_cpu_every_product_of_a_bfloat16_dense_layers_step_stays_bfloat16():
    """The layout the CPU's bfloat16 library needs (module docstring): forward, dx and dw
    of a dense layer all compile to bfloat16 products, none converted to float32. Skipped
    where XLA:CPU has no such library (a plain forward product is converted there too)."""
    x, w, b = jnp.ones((256, 64), BF16), jnp.ones((64, 96), jnp.float32), jnp.ones((96,), jnp.float32)
    if fast_compute_dtype()[0] != BF16:  # hardware-dependent: this project's CPU has AMX
        pytest.skip("this XLA:CPU computes bfloat16 products in float32")
    plain = jax.jit(lambda x, w: jnp.dot(x, w.astype(BF16), preferred_element_type=jnp.float32))

    def loss(x, w, b):
        return jnp.sum(matmul(x, w, BF16, b).astype(jnp.float32) ** 2)

    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    assert float32_dots(step.lower(x, w, b).compile().as_text()) == []
    # Autodiff of the plain product, for contrast, converts dw's product to float32.
    naive = jax.jit(jax.grad(lambda x, w: jnp.sum(plain(x, w) ** 2), argnums=(0, 1)))
    assert float32_dots(naive.lower(x, w).compile().as_text())


def test_auto_compute_dtype_is_bfloat16_exactly_where_the_cpu_multiplies_it_natively():
    x = jax.ShapeDtypeStruct((64, 64), BF16)
    plain = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)).lower(x, x).compile()
    dtype, why = fast_compute_dtype()
    assert dtype == (jnp.float32 if float32_dots(plain.as_text()) else BF16), why
