"""Matrix products in the compute dtype with float32 accumulation, laid out for the backend.

Every product a model computes goes through `matmul` (dense layers, adapters, tied
decoders) or `batched_matmul` (attention). In float32 they are plain products. In a 16-bit
compute dtype (bfloat16) they accumulate in float32 and round once, as mixed precision
does everywhere; parameters stay in their own dtype (float32) and are cast for the product
only, so their gradients come back in that dtype.

On CPU, XLA hands a bfloat16 product to its fast library (YNNPACK: AMX or AVX512-BF16
tiles, 5x the float32 rate on this project's CPU; README, Benchmarks) only when it
accumulates in float32 and its operands are row-major with the contracted dimension of
the left one last. A backward pass contracts over the rows of an activation (the weight
gradient x^T g, attention's p^T g and ds^T q); autodiff expresses those as transposed
operands, which XLA folds into the product's dimension numbers and which then run at the
float32 rate after a conversion. The hand-written backward passes here transpose such an
operand into a real row-major buffer first (`rows_last`), so all three products of every
layer take the fast path. Elsewhere (float32, GPU, TPU) they are the plain products and
autodiff's backward pass.

Shape suffixes: X rows, K contracted, F output features, B batch dims (any number),
Q / L rows and columns of a batched operand, H its contracted size.
"""

import functools
import re

import jax
import jax.numpy as jnp

Array = jax.Array


@functools.cache
def fast_compute_dtype() -> tuple[jnp.dtype, str]:
    """The compute dtype that trains fastest on the default backend, and why: bfloat16 on
    GPUs and TPUs (their matrix units' type), and on a CPU whose XLA computes bfloat16
    products natively (checked by compiling one: on this project's CPU, with AMX, they run
    at 5x the float32 rate); float32 on other CPUs, where XLA converts bfloat16 products to
    float32 and gains nothing."""
    backend = jax.default_backend()
    if backend != "cpu":
        return jnp.dtype(jnp.bfloat16), f"{backend}: bfloat16 matrix units"
    x = jax.ShapeDtypeStruct((64, 64), jnp.bfloat16)
    hlo = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)).lower(x, x).compile().as_text()
    if float32_dots(hlo):
        return jnp.dtype(jnp.float32), "this CPU's XLA computes bfloat16 products in float32"
    return jnp.dtype(jnp.bfloat16), "this CPU's XLA multiplies bfloat16 natively"


def float32_dots(hlo: str) -> list[str]:
    """The dot instructions of optimised HLO text whose left operand is float32."""
    types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))
    found = []
    for line in hlo.splitlines():
        dot = re.search(r" dot\(%([\w.\-]+)", line)
        if dot and types.get(dot[1]) == "f32":
            found.append(line)
    return found


def _hand_laid_out(dtype: jnp.dtype) -> bool:
    """Whether products in `dtype` take this module's CPU layout (16-bit floats on CPU)."""
    return jnp.dtype(dtype).itemsize == 2 and jax.default_backend() == "cpu"


def rows_last(a_XK: Array) -> Array:
    """a^T [K, X] (of a [..., X, K]: the last two dims swapped) as a row-major buffer.

    A plain transpose is a layout change XLA folds into the consuming product; splitting
    X first (X = X1 x X2, X2 its smallest factor above 1) makes the swap a real copy that
    XLA keeps. An X without such a factor (1 or a prime) gets the plain transpose."""
    *lead, x, k = a_XK.shape
    split = next((d for d in range(2, min(x, 64) + 1) if x % d == 0), None)
    if split is None:
        return jnp.swapaxes(a_XK, -1, -2)
    n = len(lead)
    a = a_XK.reshape(*lead, x // split, split, k)
    a = jnp.transpose(a, (*range(n), n + 2, n, n + 1))
    return a.reshape(*lead, k, x)


def matmul(x_XK: Array, w_KF: Array, dtype: jnp.dtype, bias_F: Array | None = None) -> Array:
    """x w (+ bias) in `dtype` (w and bias cast from their own dtype), accumulated in
    float32 (the bias added in float32 too). [X, F]."""
    if _hand_laid_out(dtype):
        return _matmul_16(x_XK.astype(dtype), w_KF, bias_F)
    y_XF = jnp.dot(x_XK.astype(dtype), w_KF.astype(dtype), preferred_element_type=jnp.float32)
    return (y_XF if bias_F is None else y_XF + bias_F.astype(dtype)).astype(dtype)


@jax.custom_vjp
def _matmul_16(x_XK, w_KF, bias_F):
    return _matmul_16_fwd(x_XK, w_KF, bias_F)[0]


def _matmul_16_fwd(x_XK, w_KF, bias_F):
    y_XF = jnp.dot(x_XK, w_KF.astype(x_XK.dtype), preferred_element_type=jnp.float32)
    if bias_F is not None:
        y_XF = y_XF + bias_F.astype(jnp.float32)
    return y_XF.astype(x_XK.dtype), (x_XK, w_KF, bias_F)


def _matmul_16_bwd(residuals, g_XF):
    x_XK, w_KF, bias_F = residuals
    # dx = g w^T contracts both on their last dim (a fast form); dw = x^T g needs x^T
    # row-major; the bias's sum over rows runs in float32 (a 16-bit sum over many rows
    # is rewritten by XLA into slow, precise reduce-window trees).
    dx_XK = jax.lax.dot_general(g_XF, w_KF.astype(g_XF.dtype), (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32)
    dw_KF = jnp.dot(rows_last(x_XK), g_XF, preferred_element_type=jnp.float32)
    dbias_F = None if bias_F is None else g_XF.astype(jnp.float32).sum(0).astype(bias_F.dtype)
    return dx_XK.astype(x_XK.dtype), dw_KF.astype(w_KF.dtype), dbias_F


_matmul_16.defvjp(_matmul_16_fwd, _matmul_16_bwd)


def matmul_transposed(x_XK: Array, w_FK: Array, dtype: jnp.dtype) -> Array:
    """x w^T with operands in `dtype` (a tied decoder: states against embedding rows),
    returned in float32, as accumulated (scores a loss reads at once). [X, F]."""
    if _hand_laid_out(dtype):
        return _matmul_t_16(x_XK.astype(dtype), w_FK)
    return jax.lax.dot_general(x_XK.astype(dtype), w_FK.astype(dtype), (((1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32)


@jax.custom_vjp
def _matmul_t_16(x_XK, w_FK):
    return _matmul_t_16_fwd(x_XK, w_FK)[0]


def _matmul_t_16_fwd(x_XK, w_FK):
    y_XF = jax.lax.dot_general(x_XK, w_FK.astype(x_XK.dtype), (((1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32)
    return y_XF, (x_XK, w_FK)


def _matmul_t_16_bwd(residuals, g_XF):
    x_XK, w_FK = residuals
    g_XF = g_XF.astype(x_XK.dtype)
    dx_XK = jnp.dot(g_XF, w_FK.astype(g_XF.dtype), preferred_element_type=jnp.float32)
    dw_FK = jnp.dot(rows_last(g_XF), x_XK, preferred_element_type=jnp.float32)
    return dx_XK.astype(x_XK.dtype), dw_FK.astype(w_FK.dtype)


_matmul_t_16.defvjp(_matmul_t_16_fwd, _matmul_t_16_bwd)



def batched_matmul(a_BXK: Array, b_BKF: Array, dtype: jnp.dtype) -> Array:
    """a b over leading batch dims, float32 accumulation, in `dtype`. [..., X, F]."""
    return jnp.einsum("...xk,...kf->...xf", a_BXK.astype(dtype), b_BKF.astype(dtype),
                      preferred_element_type=jnp.float32).astype(dtype)


def batched_matmul_nt(a_BXK: Array, b_BFK: Array, dtype: jnp.dtype = jnp.float32) -> Array:
    """a b^T over leading batch dims (both contracted on their last dim), float32
    accumulation, in `dtype`. [..., X, F]."""
    return jnp.einsum("...xk,...fk->...xf", a_BXK, b_BFK, preferred_element_type=jnp.float32).astype(dtype)


def batched_matmul_tn(a_BKX: Array, b_BKF: Array, dtype: jnp.dtype) -> Array:
    """a^T b over leading batch dims (contracted over the rows of both), float32
    accumulation, in `dtype`; a is made row-major first where the CPU layout asks. [..., X, F]."""
    if _hand_laid_out(dtype):
        return batched_matmul(rows_last(a_BKX.astype(dtype)), b_BKF, dtype)
    return jnp.einsum("...kx,...kf->...xf", a_BKX.astype(dtype), b_BKF.astype(dtype),
                      preferred_element_type=jnp.float32).astype(dtype)
