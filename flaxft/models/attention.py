"""Attention masks and softmax attention, shared by every family.

Shapes: B batch, L keys, Q queries (L, or the gathered rows of a last layer), N heads,
H head size.
"""

import functools

import jax
import jax.numpy as jnp

from flaxft.models.dropout import dropout, keep_mask
from flaxft.models.matmul import batched_matmul, batched_matmul_nt, batched_matmul_tn

Array = jax.Array


def attention_mask_B1LL(attention_mask_BL: Array, segment_ids_BL: Array | None) -> Array:
    """Boolean mask [B, 1, L, L] (or [B, 1, 1, L] without segments): query q may attend
    to key k.

    Keys must be real tokens (attention_mask 1); with segment ids, queries and keys must
    also belong to the same packed segment.
    """
    mask_B1LL = attention_mask_BL.astype(bool)[:, None, None, :]
    if segment_ids_BL is not None:
        same_BLL = segment_ids_BL[:, :, None] == segment_ids_BL[:, None, :]
        mask_B1LL = mask_B1LL & same_BLL[:, None]
    return mask_B1LL


def gather_query_rows(mask_B1LL: Array, positions_BQ: Array) -> Array:
    """The attention mask's rows for queries at the given positions: [B, 1, Q, L]
    (a mask that does not vary over queries, [B, 1, 1, L], is returned as it is)."""
    if mask_B1LL.shape[2] == 1:
        return mask_B1LL
    return jnp.take_along_axis(mask_B1LL, positions_BQ[:, None, :, None], axis=2)


def attention_with_dropout(
    q_BQNH: Array, k_BLNH: Array, v_BLNH: Array, mask_B1QL: Array, rate: float, dropout_rng: Array
) -> Array:
    """Softmax attention with dropout on the probabilities (softmax in float32). [B, Q, N, H]."""
    scale = q_BQNH.shape[-1] ** -0.5
    logits_BNQL = jnp.einsum("bqnh,bknh->bnqk", q_BQNH, k_BLNH, preferred_element_type=jnp.float32)
    logits_BNQL = jnp.where(mask_B1QL, logits_BNQL * scale, jnp.finfo(jnp.float32).min)
    probs_BNQL = jax.nn.softmax(logits_BNQL, axis=-1)
    probs_BNQL = dropout(probs_BNQL, rate, dropout_rng).astype(v_BLNH.dtype)
    return jnp.einsum("bnqk,bknh->bqnh", probs_BNQL, v_BLNH, preferred_element_type=jnp.float32).astype(v_BLNH.dtype)


def _softmax_attention_fwd(q_BNQH, k_BNLH, v_BNLH, mask_B1QL, keep_BNQL, keep_scale):
    dtype = q_BNQH.dtype
    scale = q_BNQH.shape[-1] ** -0.5
    logits_BNQL = batched_matmul_nt(q_BNQH, k_BNLH)
    logits_BNQL = jnp.where(mask_B1QL, logits_BNQL * scale, _LARGE_NEGATIVE)
    unnormalized_BNQL = jnp.exp(logits_BNQL - logits_BNQL.max(-1, keepdims=True))
    probs_BNQL = unnormalized_BNQL / unnormalized_BNQL.sum(-1, keepdims=True)
    out_BNQH = batched_matmul(_dropped(probs_BNQL, keep_BNQL, keep_scale), v_BNLH, dtype)
    return out_BNQH, (q_BNQH, k_BNLH, v_BNLH, mask_B1QL, keep_BNQL, probs_BNQL)


def _dropped(x_BNQL: Array, keep_BNQL: Array | None, keep_scale: float) -> Array:
    return x_BNQL if keep_BNQL is None else jnp.where(keep_BNQL, x_BNQL * keep_scale, 0.0)


def _softmax_attention_bwd(keep_scale, residuals, g_BNQH):
    q_BNQH, k_BNLH, v_BNLH, mask_B1QL, keep_BNQL, probs_BNQL = residuals
    dtype = q_BNQH.dtype
    scale = q_BNQH.shape[-1] ** -0.5
    dv_BNLH = batched_matmul_tn(_dropped(probs_BNQL, keep_BNQL, keep_scale), g_BNQH, dtype)
    dprobs_BNQL = _dropped(batched_matmul_nt(g_BNQH, v_BNLH), keep_BNQL, keep_scale)
    # softmax's vector-Jacobian product, then the mask's (a row with no allowed key has
    # uniform probabilities over masked keys, which get no gradient).
    dlogits_BNQL = probs_BNQL * (dprobs_BNQL - (probs_BNQL * dprobs_BNQL).sum(-1, keepdims=True))
    dlogits_BNQL = jnp.where(mask_B1QL, dlogits_BNQL * scale, 0.0).astype(dtype)
    dq_BNQH = batched_matmul(dlogits_BNQL, k_BNLH, dtype)
    dk_BNLH = batched_matmul_tn(dlogits_BNQL, q_BNQH, dtype)
    return dq_BNQH, dk_BNLH, dv_BNLH, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _softmax_attention(q_BNQH, k_BNLH, v_BNLH, mask_B1QL, keep_BNQL, keep_scale):
    return _softmax_attention_fwd(q_BNQH, k_BNLH, v_BNLH, mask_B1QL, keep_BNQL, keep_scale)[0]


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)
_LARGE_NEGATIVE = -0.7 * float(jnp.finfo(jnp.float32).max)  # jax.nn.dot_product_attention's


def softmax_attention_heads_first(
    q_BNQH: Array, k_BNLH: Array, v_BNLH: Array, mask_B1QL: Array, rate: float = 0.0, dropout_rng: Array | None = None
) -> Array:
    """softmax(q k^T / sqrt(H), over the keys the mask allows) v on heads-first operands,
    the math of `jax.nn.dot_product_attention`'s XLA implementation (logits and softmax in
    float32, masked logits at its large negative number), with `dropout`'s mask on the
    probabilities when `dropout_rng` is given and rate > 0 (the same draws as
    `attention_with_dropout`). Products accumulate in float32, in q's dtype
    (`flaxft.models.matmul`). A hand-written backward pass keeps only the probabilities
    (and the dropout mask) from the forward pass: autodiff of the softmax keeps its
    exponentials and a normaliser broadcast to the probabilities' shape as well, two more
    [B, N, Q, L] float32 buffers per layer. Heads first, every product has its batch
    dimensions leading, as XLA:CPU computes them, so no operand is transposed around them
    (README, Benchmarks). [B, N, Q, H]."""
    keep_BNQL, keep_scale = None, 1.0
    if dropout_rng is not None and round(rate * 65536) > 0:
        b, n, q, _ = q_BNQH.shape
        keep_BNQL, keep_scale = keep_mask(rate, dropout_rng, (b, n, q, k_BNLH.shape[2]))
    return _softmax_attention(q_BNQH, k_BNLH, v_BNLH, mask_B1QL, keep_BNQL, keep_scale)


def _heads_first(x_BLNH: Array) -> Array:
    return jnp.swapaxes(x_BLNH, 1, 2)


def attention(
    q_BQNH: Array, k_BLNH: Array, v_BLNH: Array, mask_B1QL: Array, rate: float, dropout_rng: Array | None
) -> Array:
    """Softmax attention over the keys the mask allows, with dropout on the probabilities
    when `dropout_rng` is given and rate > 0 (training). [B, Q, N, H].

    On CPU `softmax_attention_heads_first` (operands transposed heads first). On
    accelerators `jax.nn.dot_product_attention` without dropout (cuDNN's fused attention
    on GPUs where it applies) and the explicit softmax of `attention_with_dropout` with it,
    so the configured dropout is applied.
    """
    if jax.default_backend() == "cpu":
        out_BNQH = softmax_attention_heads_first(_heads_first(q_BQNH), _heads_first(k_BLNH), _heads_first(v_BLNH),
                                                 mask_B1QL, rate, dropout_rng)
        return _heads_first(out_BNQH)
    if dropout_rng is None or rate == 0.0:
        return jax.nn.dot_product_attention(q_BQNH, k_BLNH, v_BLNH, mask=mask_B1QL)
    return attention_with_dropout(q_BQNH, k_BLNH, v_BLNH, mask_B1QL, rate, dropout_rng)


def attention_heads_first(
    q_BNQH: Array, k_BNLH: Array, v_BNLH: Array, mask_B1QL: Array, rate: float, dropout_rng: Array | None
) -> Array:
    """`attention` on heads-first operands (on CPU with no transposes). [B, N, Q, H]."""
    if jax.default_backend() == "cpu":
        return softmax_attention_heads_first(q_BNQH, k_BNLH, v_BNLH, mask_B1QL, rate, dropout_rng)
    out_BQNH = attention(_heads_first(q_BNQH), _heads_first(k_BNLH), _heads_first(v_BNLH), mask_B1QL, rate,
                         dropout_rng)
    return _heads_first(out_BQNH)
