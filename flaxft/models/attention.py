"""Attention masks and softmax attention, shared by every family: the one place that
dispatches the attention implementations `model.attention` chooses from.

- "xla": explicit softmax, the only one with dropout on the attention probabilities (on CPU
  `softmax_attention_heads_first`, elsewhere `attention_with_dropout`).
- "dot_product": `jax.nn.dot_product_attention` with the boolean mask (cuDNN's fused
  attention on NVIDIA GPUs where its constraints allow, XLA elsewhere).
- "flash": Pallas flash attention (`flash_attention`) with the mask as segment ids: on GPU
  jax's Triton kernel, on TPU splash attention, on CPU the GPU kernel in interpret mode.
- "auto": `resolve_attention` picks one of these per backend and config.

Shapes: B batch, L keys, Q queries (L, or the gathered rows of a last layer), N heads,
H head size.
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp

from flaxft.errors import InputError
from flaxft.models.dropout import dropout, keep_mask
from flaxft.models.matmul import batched_matmul, batched_matmul_nt, batched_matmul_tn

Array = jax.Array
IMPLEMENTATIONS = ("auto", "xla", "dot_product", "flash")


def check_attention(implementation: str, dropout_field: str, dropout_rate: float,
                    window_fields: tuple[str, ...]) -> None:
    """InputError naming the fields when `model.attention` cannot serve the config: an
    unknown value, a fused implementation with attention-probability dropout (which only
    "xla" applies; a configured dropout is never dropped), "flash" with sliding windows
    (`window_fields`: the config fields that ask for them, empty when none do)."""
    if implementation not in IMPLEMENTATIONS:
        raise InputError(f"model.attention {implementation!r} is not one of {IMPLEMENTATIONS}")
    if implementation in ("dot_product", "flash") and dropout_rate > 0:
        raise InputError(f"model.attention {implementation!r} has no dropout on attention probabilities but "
                         f"model.{dropout_field} is {dropout_rate}: use 'xla' or 'auto', or set it to 0")
    if implementation == "flash" and window_fields:
        fields = " and ".join(f"model.{f}" for f in window_fields)
        raise InputError(f"model.attention 'flash' has no sliding windows, which {fields} ask for: use "
                         "'dot_product', 'xla' or 'auto', or make every layer full_attention")


def resolve_attention(implementation: str, training_dropout: bool, backend: str, windowed: bool) -> str:
    """The implementation ("xla", "dot_product" or "flash") that `implementation` names on
    `backend` (`jax.default_backend()`): itself unless "auto", which picks "xla" when the
    call applies attention dropout (`training_dropout`) and on CPU (the fastest there),
    "flash" (splash attention) on TPU for models without sliding windows (`windowed`), and
    "dot_product" elsewhere (cuDNN's fused attention on NVIDIA GPUs)."""
    if implementation != "auto":
        return implementation
    if training_dropout or backend == "cpu":
        return "xla"
    if backend == "tpu" and not windowed:
        return "flash"
    return "dot_product"


def describe_attention(implementation: str, dropout_rate: float, backend: str, windowed: bool) -> str:
    """What `model.attention` resolves to on `backend`, for the start-up line: the
    implementation, and for "auto" why (and the evaluation one when it differs)."""
    train = resolve_attention(implementation, dropout_rate > 0, backend, windowed)
    if implementation != "auto":
        return train
    evaluate = resolve_attention(implementation, False, backend, windowed)
    if train == evaluate:
        return f"{train} (model.attention auto on {backend})"
    return f"{train} in training (attention dropout {dropout_rate}), {evaluate} in evaluation " \
           f"(model.attention auto on {backend})"


@flax.struct.dataclass
class Mask:
    """Which keys each query may attend to, in the two forms the implementations take.

    allowed_B1QL: bool [B, 1, Q, L] (or [B, 1, 1, L] when it does not vary over queries).
    segment_ids_BL: int32 [B, L], the same mask for the flash kernels, which take one
        segment-id array for queries and keys alike: a query sees the keys with its id.
        Real tokens have their packed segment's id + 1 (1 in unpacked rows); padding has 0,
        an id no real token has, so no real query sees a padding key (padding queries see
        padding keys only: their outputs differ from the boolean mask's, are never NaN,
        and are dropped by every loss). None when the query rows were gathered
        (`gather_query_rows`), which the kernels cannot index: "flash" then gives way to
        "dot_product" with the boolean mask, the same math without dropout.
    """

    allowed_B1QL: Array
    segment_ids_BL: Array | None = None


def attention_masks(attention_mask_BL: Array, segment_ids_BL: Array | None) -> Mask:
    """The `Mask` of a batch: `attention_mask_B1LL` and its segment ids."""
    real_BL = attention_mask_BL.astype(bool)
    ids_BL = jnp.ones_like(attention_mask_BL, jnp.int32) if segment_ids_BL is None else segment_ids_BL + 1
    return Mask(attention_mask_B1LL(attention_mask_BL, segment_ids_BL), jnp.where(real_BL, ids_BL, 0).astype(jnp.int32))


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


def gather_query_rows(mask: Mask, positions_BQ: Array) -> Mask:
    """The mask's rows for queries at the given positions: allowed [B, 1, Q, L] (a mask
    that does not vary over queries, [B, 1, 1, L], stays as it is), no segment ids."""
    allowed_B1QL = mask.allowed_B1QL
    if allowed_B1QL.shape[2] != 1:
        allowed_B1QL = jnp.take_along_axis(allowed_B1QL, positions_BQ[:, None, :, None], axis=2)
    return Mask(allowed_B1QL)


def attention_with_dropout(
    q_BQNH: Array, k_BLNH: Array, v_BLNH: Array, mask_B1QL: Array, rate: float, dropout_rng: Array | None
) -> Array:
    """Softmax attention with dropout on the probabilities when `dropout_rng` is given
    (softmax in float32). [B, Q, N, H]."""
    scale = q_BQNH.shape[-1] ** -0.5
    logits_BNQL = jnp.einsum("bqnh,bknh->bnqk", q_BQNH, k_BLNH, preferred_element_type=jnp.float32)
    logits_BNQL = jnp.where(mask_B1QL, logits_BNQL * scale, jnp.finfo(jnp.float32).min)
    probs_BNQL = jax.nn.softmax(logits_BNQL, axis=-1)
    if dropout_rng is not None:
        probs_BNQL = dropout(probs_BNQL, rate, dropout_rng)
    probs_BNQL = probs_BNQL.astype(v_BLNH.dtype)
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


def _padded(x_BL: Array, length: int) -> Array:
    """x zero-padded along axis 1 to `length`."""
    return jnp.pad(x_BL, [(0, 0), (0, length - x_BL.shape[1])] + [(0, 0)] * (x_BL.ndim - 2))


def pallas_gpu_attention(q_BLNH: Array, k_BLNH: Array, v_BLNH: Array, segment_ids_BL: Array,
                         interpret: bool = False) -> Array:
    """softmax(q k^T / sqrt(H)) v over the keys with the query's segment id, by jax's Pallas
    Triton flash-attention kernel (`jax.experimental.pallas.ops.gpu.attention.mha`, its
    fused backward pass); `interpret` runs it on any backend (slow: for tests). Rows are
    padded (segment id 0) to the kernel's blocks: 128, or the next power of two below
    that. [B, L, N, H]."""
    from jax.experimental.pallas.ops.gpu import attention as pallas_gpu  # Pallas only where used: start-up

    length = q_BLNH.shape[1]
    block = min(128, 1 << (length - 1).bit_length())
    padded = -(-length // block) * block
    small = min(32, padded)
    blocks = pallas_gpu.BlockSizes(block_q=block, block_k=block, block_q_dkv=small, block_kv_dkv=small,
                                   block_q_dq=small, block_kv_dq=small)
    q_BPNH, k_BPNH, v_BPNH = (_padded(x, padded) for x in (q_BLNH, k_BLNH, v_BLNH))
    out_BPNH = pallas_gpu.mha(q_BPNH, k_BPNH, v_BPNH, _padded(segment_ids_BL, padded),
                              sm_scale=q_BLNH.shape[-1] ** -0.5, block_sizes=blocks, interpret=interpret)
    return out_BPNH[:, :length]


@functools.lru_cache(maxsize=None)
def _splash_kernel(length: int, num_heads: int, interpret: bool):
    """Splash attention's kernel for rows of `length` (full mask; segment ids per call)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

    mask = splash_mask.MultiHeadMask([splash_mask.FullMask((length, length))] * num_heads)
    return splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q_BLNH: Array, k_BLNH: Array, v_BLNH: Array, segment_ids_BL: Array,
                     interpret: bool = False) -> Array:
    """softmax(q k^T / sqrt(H)) v over the keys with the query's segment id, by TPU splash
    attention (`jax.experimental.pallas.ops.tpu.splash_attention`, its default 128 blocks;
    rows padded to them with segment id 0), one kernel call per row; `interpret` runs it
    on any backend (slow: for tests). [B, L, N, H]."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash

    length = q_BLNH.shape[1]
    padded = -(-length // 128) * 128
    kernel = _splash_kernel(padded, q_BLNH.shape[2], interpret)
    q_BNPH, k_BNPH, v_BNPH = (_heads_first(_padded(x, padded))
                              for x in (q_BLNH * q_BLNH.shape[-1] ** -0.5, k_BLNH, v_BLNH))
    ids_BP = _padded(segment_ids_BL, padded)

    def one_row(q_NPH, k_NPH, v_NPH, ids_P):
        return kernel(q_NPH, k_NPH, v_NPH, segment_ids=splash.SegmentIds(q=ids_P, kv=ids_P))

    return _heads_first(jax.vmap(one_row)(q_BNPH, k_BNPH, v_BNPH, ids_BP))[:, :length]


def flash_attention(q_BLNH: Array, k_BLNH: Array, v_BLNH: Array, segment_ids_BL: Array) -> Array:
    """Pallas flash attention on the current backend: `splash_attention` on TPU,
    `pallas_gpu_attention` on GPU, and the GPU kernel in interpret mode elsewhere (CPU:
    slow, for tests). No dropout. [B, L, N, H]."""
    backend = jax.default_backend()
    if backend == "tpu":
        return splash_attention(q_BLNH, k_BLNH, v_BLNH, segment_ids_BL)
    return pallas_gpu_attention(q_BLNH, k_BLNH, v_BLNH, segment_ids_BL, interpret=backend != "gpu")


def attention(
    q_BQNH: Array, k_BLNH: Array, v_BLNH: Array, mask: Mask, rate: float, dropout_rng: Array | None,
    implementation: str = "xla",
) -> Array:
    """Softmax attention over the keys the mask allows, by `implementation` ("xla",
    "dot_product" or "flash": `resolve_attention`'s). [B, Q, N, H].

    "xla" applies dropout on the probabilities when `dropout_rng` is given and rate > 0
    (training): on CPU `softmax_attention_heads_first` (operands transposed heads first),
    elsewhere the explicit softmax of `attention_with_dropout`. The fused ones never see a
    dropout rng (config validation refuses them with attention dropout): "dot_product" is
    `jax.nn.dot_product_attention`, "flash" `flash_attention` with the mask's segment ids
    (or, for gathered query rows, "dot_product").
    """
    if implementation == "flash" and mask.segment_ids_BL is not None:
        return flash_attention(q_BQNH, k_BLNH, v_BLNH, mask.segment_ids_BL)
    if implementation in ("flash", "dot_product"):
        return jax.nn.dot_product_attention(q_BQNH, k_BLNH, v_BLNH, mask=mask.allowed_B1QL)
    if jax.default_backend() == "cpu":
        out_BNQH = softmax_attention_heads_first(_heads_first(q_BQNH), _heads_first(k_BLNH), _heads_first(v_BLNH),
                                                 mask.allowed_B1QL, rate, dropout_rng)
        return _heads_first(out_BNQH)
    return attention_with_dropout(q_BQNH, k_BLNH, v_BLNH, mask.allowed_B1QL, rate, dropout_rng)


def attention_heads_first(
    q_BNQH: Array, k_BNLH: Array, v_BNLH: Array, mask: Mask, rate: float, dropout_rng: Array | None,
    implementation: str = "xla",
) -> Array:
    """`attention` on heads-first operands (on CPU with no transposes for "xla"). [B, N, Q, H]."""
    if implementation == "xla" and jax.default_backend() == "cpu":
        return softmax_attention_heads_first(q_BNQH, k_BNLH, v_BNLH, mask.allowed_B1QL, rate, dropout_rng)
    out_BQNH = attention(_heads_first(q_BNQH), _heads_first(k_BNLH), _heads_first(v_BNLH), mask, rate,
                         dropout_rng, implementation)
    return _heads_first(out_BQNH)
