"""Attention masks and softmax attention, shared by every family.

Shapes: B batch, L keys, Q queries (L, or the gathered rows of a last layer), N heads,
H head size.
"""

import jax
import jax.numpy as jnp

from flaxft.models.dropout import dropout

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
    probs_BNQL = dropout(probs_BNQL, rate, dropout_rng)
    return jnp.einsum("bnqk,bknh->bqnh", probs_BNQL.astype(v_BLNH.dtype), v_BLNH)


def _softmax_attention_fwd(q_BQNH, k_BLNH, v_BLNH, mask_B1QL):
    scale = q_BQNH.shape[-1] ** -0.5
    logits_BNQL = jnp.einsum("bqnh,bknh->bnqk", q_BQNH, k_BLNH, preferred_element_type=jnp.float32)
    logits_BNQL = jnp.where(mask_B1QL, logits_BNQL * scale, _LARGE_NEGATIVE)
    unnormalized_BNQL = jnp.exp(logits_BNQL - logits_BNQL.max(-1, keepdims=True))
    probs_BNQL = unnormalized_BNQL / unnormalized_BNQL.sum(-1, keepdims=True)
    out_BQNH = jnp.einsum("bnqk,bknh->bqnh", probs_BNQL.astype(v_BLNH.dtype), v_BLNH)
    return out_BQNH, (q_BQNH, k_BLNH, v_BLNH, mask_B1QL, probs_BNQL)


def _softmax_attention_bwd(residuals, g_BQNH):
    q_BQNH, k_BLNH, v_BLNH, mask_B1QL, probs_BNQL = residuals
    scale = q_BQNH.shape[-1] ** -0.5
    dv_BLNH = jnp.einsum("bnqk,bqnh->bknh", probs_BNQL.astype(g_BQNH.dtype), g_BQNH)
    dprobs_BNQL = jnp.einsum("bqnh,bknh->bnqk", g_BQNH, v_BLNH, preferred_element_type=jnp.float32)
    # softmax's vector-Jacobian product, then the mask's (a row with no allowed key has
    # uniform probabilities over masked keys, which get no gradient).
    dlogits_BNQL = probs_BNQL * (dprobs_BNQL - (probs_BNQL * dprobs_BNQL).sum(-1, keepdims=True))
    dlogits_BNQL = jnp.where(mask_B1QL, dlogits_BNQL * scale, 0.0).astype(q_BQNH.dtype)
    dq_BQNH = jnp.einsum("bnqk,bknh->bqnh", dlogits_BNQL, k_BLNH)
    dk_BLNH = jnp.einsum("bnqk,bqnh->bknh", dlogits_BNQL, q_BQNH)
    return dq_BQNH, dk_BLNH, dv_BLNH, None


@jax.custom_vjp
def softmax_attention(q_BQNH: Array, k_BLNH: Array, v_BLNH: Array, mask_B1QL: Array) -> Array:
    """softmax(q k^T / sqrt(H), over the keys the mask allows) v, the math of
    `jax.nn.dot_product_attention`'s XLA implementation (logits and softmax in float32,
    masked logits at its large negative number), with a hand-written backward pass that
    keeps only the probabilities from the forward pass: autodiff of the softmax keeps its
    exponentials and a normaliser broadcast to the probabilities' shape as well, two more
    [B, N, Q, L] float32 buffers per layer (README, Benchmarks). [B, Q, N, H]."""
    return _softmax_attention_fwd(q_BQNH, k_BLNH, v_BLNH, mask_B1QL)[0]


softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)
_LARGE_NEGATIVE = -0.7 * float(jnp.finfo(jnp.float32).max)  # jax.nn.dot_product_attention's


def attention(
    q_BQNH: Array, k_BLNH: Array, v_BLNH: Array, mask_B1QL: Array, rate: float, dropout_rng: Array | None
) -> Array:
    """Softmax attention over the keys the mask allows. [B, Q, N, H].

    With `dropout_rng` and rate > 0 (training with attention-probability dropout) it takes
    the explicit softmax of `attention_with_dropout`, so the configured dropout is applied;
    otherwise `softmax_attention`.
    """
    if dropout_rng is None or rate == 0.0:
        return softmax_attention(q_BQNH, k_BLNH, v_BLNH, mask_B1QL)
    return attention_with_dropout(q_BQNH, k_BLNH, v_BLNH, mask_B1QL, rate, dropout_rng)
