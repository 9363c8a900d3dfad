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


def _softmax_attention_fwd(q_BNQH, k_BNLH, v_BNLH, mask_B1QL):
    scale = q_BNQH.shape[-1] ** -0.5
    logits_BNQL = jnp.einsum("bnqh,bnkh->bnqk", q_BNQH, k_BNLH, preferred_element_type=jnp.float32)
    logits_BNQL = jnp.where(mask_B1QL, logits_BNQL * scale, _LARGE_NEGATIVE)
    unnormalized_BNQL = jnp.exp(logits_BNQL - logits_BNQL.max(-1, keepdims=True))
    probs_BNQL = unnormalized_BNQL / unnormalized_BNQL.sum(-1, keepdims=True)
    out_BNQH = jnp.einsum("bnqk,bnkh->bnqh", probs_BNQL.astype(v_BNLH.dtype), v_BNLH)
    return out_BNQH, (q_BNQH, k_BNLH, v_BNLH, mask_B1QL, probs_BNQL)


def _softmax_attention_bwd(residuals, g_BNQH):
    q_BNQH, k_BNLH, v_BNLH, mask_B1QL, probs_BNQL = residuals
    scale = q_BNQH.shape[-1] ** -0.5
    dv_BNLH = jnp.einsum("bnqk,bnqh->bnkh", probs_BNQL.astype(g_BNQH.dtype), g_BNQH)
    dprobs_BNQL = jnp.einsum("bnqh,bnkh->bnqk", g_BNQH, v_BNLH, preferred_element_type=jnp.float32)
    # softmax's vector-Jacobian product, then the mask's (a row with no allowed key has
    # uniform probabilities over masked keys, which get no gradient).
    dlogits_BNQL = probs_BNQL * (dprobs_BNQL - (probs_BNQL * dprobs_BNQL).sum(-1, keepdims=True))
    dlogits_BNQL = jnp.where(mask_B1QL, dlogits_BNQL * scale, 0.0).astype(q_BNQH.dtype)
    dq_BNQH = jnp.einsum("bnqk,bnkh->bnqh", dlogits_BNQL, k_BNLH)
    dk_BNLH = jnp.einsum("bnqk,bnqh->bnkh", dlogits_BNQL, q_BNQH)
    return dq_BNQH, dk_BNLH, dv_BNLH, None


@jax.custom_vjp
def softmax_attention_heads_first(q_BNQH: Array, k_BNLH: Array, v_BNLH: Array, mask_B1QL: Array) -> Array:
    """softmax(q k^T / sqrt(H), over the keys the mask allows) v on heads-first operands,
    the math of `jax.nn.dot_product_attention`'s XLA implementation (logits and softmax in
    float32, masked logits at its large negative number), with a hand-written backward
    pass that keeps only the probabilities from the forward pass: autodiff of the softmax
    keeps its exponentials and a normaliser broadcast to the probabilities' shape as well,
    two more [B, N, Q, L] float32 buffers per layer. Heads first, every product has its
    batch dimensions leading, as XLA:CPU computes them, so no operand is transposed
    around them (README, Benchmarks). [B, N, Q, H]."""
    return _softmax_attention_fwd(q_BNQH, k_BNLH, v_BNLH, mask_B1QL)[0]


softmax_attention_heads_first.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)
_LARGE_NEGATIVE = -0.7 * float(jnp.finfo(jnp.float32).max)  # jax.nn.dot_product_attention's


def _heads_first(x_BLNH: Array) -> Array:
    return jnp.swapaxes(x_BLNH, 1, 2)


def softmax_attention(q_BQNH: Array, k_BLNH: Array, v_BLNH: Array, mask_B1QL: Array) -> Array:
    """Attention without dropout. On CPU `softmax_attention_heads_first` (operands
    transposed heads first); on accelerators `jax.nn.dot_product_attention` (cuDNN's fused
    attention on GPUs where it applies). [B, Q, N, H]."""
    if jax.default_backend() != "cpu":
        return jax.nn.dot_product_attention(q_BQNH, k_BLNH, v_BLNH, mask=mask_B1QL)
    out_BNQH = softmax_attention_heads_first(_heads_first(q_BQNH), _heads_first(k_BLNH), _heads_first(v_BLNH),
                                             mask_B1QL)
    return _heads_first(out_BNQH)


def attention(
    q_BQNH: Array, k_BLNH: Array, v_BLNH: Array, mask_B1QL: Array, rate: float, dropout_rng: Array | None
) -> Array:
    """Softmax attention over the keys the mask allows. [B, Q, N, H].

    With `dropout_rng` and rate > 0 (training with attention-probability dropout) it takes
    the explicit softmax of `attention_with_dropout`, so the configured dropout is applied;
    otherwise `softmax_attention` (backend-dependent).
    """
    if dropout_rng is None or rate == 0.0:
        return softmax_attention(q_BQNH, k_BLNH, v_BLNH, mask_B1QL)
    return attention_with_dropout(q_BQNH, k_BLNH, v_BLNH, mask_B1QL, rate, dropout_rng)


def attention_heads_first(
    q_BNQH: Array, k_BNLH: Array, v_BNLH: Array, mask_B1QL: Array, rate: float, dropout_rng: Array | None
) -> Array:
    """`attention` on heads-first operands (on CPU without dropout, with no transposes). [B, N, Q, H]."""
    if (dropout_rng is None or rate == 0.0) and jax.default_backend() == "cpu":
        return softmax_attention_heads_first(q_BNQH, k_BNLH, v_BNLH, mask_B1QL)
    out_BQNH = attention(_heads_first(q_BNQH), _heads_first(k_BNLH), _heads_first(v_BNLH), mask_B1QL, rate,
                         dropout_rng)
    return _heads_first(out_BQNH)
