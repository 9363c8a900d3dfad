"""The ModernBERT encoder: token embeddings and LayerNorm (no position embeddings),
pre-LayerNorm layers with rotary attention (global or sliding-window per layer) and a
GeGLU MLP, and a final LayerNorm; as transformers 5 defines `modernbert`.

Shape suffixes: B batch, L sequence length, Q query rows, D hidden size, N attention
heads, H head size, F intermediate (MLP) size, V vocabulary size, K packed segments.

Padding and packing: keys are only the real tokens of the query's own segment
(`segment_ids`), rotary positions restart in every segment, and a sliding window is
counted in row positions, which inside a segment are its own positions; so a padded row
gives its real tokens the outputs of the unpadded sequence, and a packed row gives each
segment the outputs it has alone.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxft.models.attention import Mask, attention_heads_first, attention_masks, gather_query_rows
from flaxft.models.dropout import Dropout
from flaxft.models.family import REMAT, EncoderOutput
from flaxft.models.layers import (
    activation,
    default_attention_mask,
    default_position_ids,
    dense,
    embed,
    gather_positions,
    layer_norm,
    materialized_cotangent,
)
from flaxft.models.modernbert.configuration import ModernBertConfig

Array = jax.Array
_ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


def init_stds(config: ModernBertConfig) -> dict[str, float]:
    """ModernBERT's initial weight scales: input projections and embeddings at
    initializer_range, projections back into the residual stream scaled down by the depth,
    classifiers at D^-1/2 (all truncated normals)."""
    return {
        "in": config.initializer_range,
        "out": config.initializer_range / math.sqrt(2.0 * config.num_hidden_layers),
        "final_out": config.hidden_size ** -0.5,
    }


def norm(config: ModernBertConfig, name: str) -> nn.LayerNorm:
    """ModernBERT's LayerNorm: epsilon norm_eps, a bias only with norm_bias."""
    return layer_norm(config, name, epsilon=config.norm_eps, use_bias=config.norm_bias)


def rotary_tables(position_ids_BL: Array, head_dim: int, theta: float) -> tuple[Array, Array]:
    """cos and sin [B, L, H] (float32) of the rotary angles position * theta^(-2i/H),
    each frequency used for feature i and i + H/2."""
    inv_freq = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    angles_BLh = position_ids_BL.astype(jnp.float32)[..., None] * inv_freq
    angles_BLH = jnp.concatenate([angles_BLh, angles_BLh], axis=-1)
    return jnp.cos(angles_BLH), jnp.sin(angles_BLH)


def apply_rotary(x_BNLH: Array, cos_BLH: Array, sin_BLH: Array) -> Array:
    """x (heads first) rotated by the angles: x cos + rotate_half(x) sin, in float32. [B, N, L, H]."""
    x = x_BNLH.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = x * cos_BLH[:, None] + rotated * sin_BLH[:, None]
    return out.astype(x_BNLH.dtype)


def sliding_window_mask_B1LL(mask_B1LL: Array, length: int, window: int) -> Array:
    """`mask` restricted to keys at most `window` row positions from the query. [B, 1, L, L]."""
    index_L = jnp.arange(length)
    near_LL = jnp.abs(index_L[:, None] - index_L[None, :]) <= window
    return mask_B1LL & near_LL[None, None]


def sliding_window_mask(mask: Mask, length: int, window: int) -> Mask:
    """`mask` restricted to keys at most `window` row positions from the query; its
    segment ids stay (they cannot say windows: config validation keeps "flash", which
    reads them, from models with sliding windows)."""
    return mask.replace(allowed_B1QL=sliding_window_mask_B1LL(mask.allowed_B1QL, length, window))


class ModernBertEmbeddings(nn.Module):
    """Token embeddings, LayerNorm, dropout."""

    config: ModernBertConfig

    def setup(self):
        cfg = self.config
        self.tok_embeddings = embed(cfg, cfg.vocab_size, "vocab", "tok_embeddings")
        self.norm = norm(cfg, "norm")
        self.drop = Dropout(cfg.embedding_dropout)

    def __call__(self, input_ids_BL: Array, deterministic: bool) -> Array:
        """[B, L, D]."""
        x_BLD = self.drop(self.norm(self.tok_embeddings(input_ids_BL)), deterministic)
        return nn.with_logical_constraint(x_BLD, _ACTIVATION_AXES)


class ModernBertAttention(nn.Module):
    """Rotary multi-head self-attention from one fused Wqkv projection, then Wo and
    dropout. Queries, keys and values are laid out heads first ([B, N, L, H], one
    transpose of the projection) before the rotary embedding, so the attention products
    need no further transposes (README, Benchmarks). Attention is the implementation
    config.attention resolves to (`flaxft.models.attention.attention_heads_first`; dropout
    on the probabilities takes the explicit softmax path)."""

    config: ModernBertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BLD: Array, mask: Mask, cos_BLH: Array, sin_BLH: Array,
                 query_positions_BQ: Array | None = None) -> Array:
        """x [B, L, D] (already normed) -> [B, L, D], or [B, Q, D] at query_positions."""
        cfg, stds = self.config, init_stds(self.config)
        heads = (cfg.num_attention_heads, cfg.head_dim)
        bias = ("fused", "heads", "kv") if cfg.attention_bias else None
        qkv_BL3NH = dense(cfg, (3, *heads), ("embed", "fused", "heads", "kv"), bias, "Wqkv", init_std=stds["in"])(x_BLD)
        qkv_3BNLH = jnp.transpose(qkv_BL3NH, (2, 0, 3, 1, 4))
        act_axes = ("activation_batch", "activation_heads", "activation_length", "activation_kv")
        q_BNLH, k_BNLH, v_BNLH = (nn.with_logical_constraint(qkv_3BNLH[i], act_axes) for i in range(3))
        q_cos_BQH, q_sin_BQH = cos_BLH, sin_BLH
        if query_positions_BQ is not None:
            q_BNLH = jnp.take_along_axis(q_BNLH, query_positions_BQ[:, None, :, None], axis=2)
            q_cos_BQH, q_sin_BQH = (gather_positions(t, query_positions_BQ) for t in (cos_BLH, sin_BLH))
            mask = gather_query_rows(mask, query_positions_BQ)
        q_BNQH = apply_rotary(q_BNLH, q_cos_BQH, q_sin_BQH)
        k_BNLH = apply_rotary(k_BNLH, cos_BLH, sin_BLH)
        rate = cfg.attention_dropout
        dropout_rng = None if self.deterministic or rate == 0.0 else self.make_rng("dropout")
        implementation = cfg.attention_implementation(training_dropout=dropout_rng is not None)
        ctx_BNQH = attention_heads_first(q_BNQH, k_BNLH, v_BNLH, mask, rate, dropout_rng, implementation)
        ctx_BQNH = jnp.swapaxes(ctx_BNQH, 1, 2)
        out_bias = ("embed",) if cfg.attention_bias else None
        out_BQD = dense(cfg, cfg.hidden_size, ("heads", "kv", "embed"), out_bias, "Wo", num_contracted=2,
                        init_std=stds["out"])(ctx_BQNH)
        return Dropout(rate)(out_BQD, deterministic=self.deterministic)


class ModernBertMLP(nn.Module):
    """GeGLU: Wi projects to an input and a gate half, act(input) * gate, dropout, Wo."""

    config: ModernBertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BLD: Array) -> Array:
        """x [B, L, D] (already normed) -> [B, L, D]."""
        cfg, stds = self.config, init_stds(self.config)
        bias_in, bias_out = (("fused", "mlp"), ("embed",)) if cfg.mlp_bias else (None, None)
        h_BL2F = dense(cfg, (2, cfg.intermediate_size), ("embed", "fused", "mlp"), bias_in, "Wi",
                       init_std=stds["in"])(x_BLD)
        h_BLF = activation(cfg.hidden_activation)(h_BL2F[:, :, 0]) * h_BL2F[:, :, 1]
        h_BLF = nn.with_logical_constraint(h_BLF, ("activation_batch", "activation_length", "activation_mlp"))
        h_BLF = Dropout(cfg.mlp_dropout)(h_BLF, deterministic=self.deterministic)
        return dense(cfg, cfg.hidden_size, ("mlp", "embed"), bias_out, "Wo", init_std=stds["out"])(h_BLF)


class ModernBertLayer(nn.Module):
    """One pre-LayerNorm layer: x + attn(attn_norm(x)), then x + mlp(mlp_norm(x)).
    Layer 0 has no attn_norm (the embeddings end in one). The gradient of the residual
    input is materialised (`flaxft.models.layers.materialized_cotangent`). Returns
    (x, None) so it can be the body of nn.scan."""

    config: ModernBertConfig
    index: int
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BLD: Array, masks: dict[str, Mask], rotary: dict[str, tuple[Array, Array]],
                 sliding: Array | None = None, query_positions_BQ: Array | None = None) -> tuple[Array, None]:
        """x [B, L, D] -> [B, L, D], or [B, Q, D] computing only the rows at query_positions.

        masks and rotary (cos, sin): by layer type. The layer's type is
        `config.layer_types[index]`, or under scan `sliding` (a bool [] per layer).
        """
        cfg = self.config
        mask, (cos_BLH, sin_BLH) = _for_layer(masks, rotary, cfg.layer_types[self.index], sliding)
        x_BLD = materialized_cotangent(x_BLD)
        h_BLD = x_BLD if self.index == 0 else norm(cfg, "attn_norm")(x_BLD)
        attn_BQD = ModernBertAttention(cfg, self.deterministic, name="attn")(
            h_BLD, mask, cos_BLH, sin_BLH, query_positions_BQ)
        x_BQD = x_BLD if query_positions_BQ is None else gather_positions(x_BLD, query_positions_BQ)
        x_BQD = x_BQD + attn_BQD
        x_BQD = x_BQD + ModernBertMLP(cfg, self.deterministic, name="mlp")(norm(cfg, "mlp_norm")(x_BQD))
        return nn.with_logical_constraint(x_BQD, _ACTIVATION_AXES), None


def _for_layer(masks: dict[str, Mask], rotary: dict[str, tuple[Array, Array]], layer_type: str,
               sliding: Array | None) -> tuple[Mask, tuple[Array, Array]]:
    """The mask and rotary tables of a layer of `layer_type`, or, given `sliding` (a
    traced bool), of the type it picks."""
    if sliding is None or len(masks) == 1:
        return masks[layer_type], rotary[layer_type]
    pick = functools.partial(jnp.where, sliding)
    full, window = "full_attention", "sliding_attention"
    cos_BLH, sin_BLH = (pick(w, f) for w, f in zip(rotary[window], rotary[full]))
    return jax.tree.map(pick, masks[window], masks[full]), (cos_BLH, sin_BLH)


class ModernBertEncoder(nn.Module):
    """The layer stack: `layer_{i}` submodules, or under scan_layers `layer_0` and one
    scanned `layers` (layers 1.., a leading layer axis; each picks its type's mask and
    rotary tables from a scanned flag)."""

    config: ModernBertConfig

    @nn.compact
    def __call__(self, x_BLD: Array, masks: dict[str, Mask], rotary: dict[str, tuple[Array, Array]],
                 deterministic: bool, output_positions_BQ: Array | None = None) -> Array:
        """x [B, L, D]; masks and rotary (cos, sin) by layer type. Returns [B, L, D], or
        [B, Q, D] at output_positions (unrolled, the last layer computes only those rows)."""
        cfg = self.config
        layer = ModernBertLayer
        if cfg.remat_policy != "none":
            layer = nn.remat(layer, policy=REMAT[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
        last = cfg.num_hidden_layers - 1
        if cfg.scan_layers and last > 0:
            x_BLD, _ = layer(cfg, 0, deterministic, name="layer_0")(x_BLD, masks, rotary)
            stack = nn.scan(
                layer,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, 0),
                length=last,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            sliding_S = jnp.asarray([t == "sliding_attention" for t in cfg.layer_types[1:]])
            x_BLD, _ = stack(cfg, 1, deterministic, name="layers")(x_BLD, masks, rotary, sliding_S)
            return x_BLD if output_positions_BQ is None else gather_positions(x_BLD, output_positions_BQ)
        for i in range(cfg.num_hidden_layers):
            positions_BQ = output_positions_BQ if i == last else None
            x_BLD, _ = layer(cfg, i, deterministic, name=f"layer_{i}")(x_BLD, masks, rotary, None, positions_BQ)
        return x_BLD


class ModernBertModule(nn.Module):
    """Embeddings, layers, final norm; with `add_pooling_layer`, also the sequence
    classifier's pooled state (`classifier_pooling`: the first token's, or the mean over
    real tokens) as pooler_output (ModernBERT has no pooler weights)."""

    config: ModernBertConfig
    add_pooling_layer: bool = False

    def setup(self):
        self.embeddings = ModernBertEmbeddings(self.config)
        self.layers = ModernBertEncoder(self.config)
        self.final_norm = norm(self.config, "final_norm")

    def __call__(
        self,
        input_ids_BL: Array,
        attention_mask_BL: Array | None = None,
        token_type_ids_BL: Array | None = None,
        position_ids_BL: Array | None = None,
        segment_ids_BL: Array | None = None,
        deterministic: bool = True,
        cls_positions_BK: Array | None = None,
        output_positions_BM: Array | None = None,
    ) -> EncoderOutput:
        """Encodes a batch.

        input_ids_BL: token ids [B, L]. attention_mask_BL: 1 for real tokens [B, L]
        (default: all real, or segment_ids > 0 when segment ids are given).
        token_type_ids_BL: ignored (ModernBERT has no token types). position_ids_BL:
        rotary positions [B, L] (default: 0..L-1, restarting at 0 in each segment).
        segment_ids_BL: [B, L] ids of sequences packed into one row (0 = padding).
        cls_positions_BK: [B, K] each packed segment's first token: pooled per segment
        (pooler_output [B, K, D]). output_positions_BM: [B, M] the only positions whose
        final states are needed: last_hidden_state is then [B, M, D] at them.
        Returns last_hidden_state [B, L, D] (or [B, M, D]) and, with add_pooling_layer,
        pooler_output [B, D] (or [B, K, D]).
        """
        cfg = self.config
        length = input_ids_BL.shape[1]
        if attention_mask_BL is None:
            attention_mask_BL = default_attention_mask(input_ids_BL, segment_ids_BL)
        if position_ids_BL is None:
            position_ids_BL = default_position_ids(input_ids_BL, segment_ids_BL)
        full = attention_masks(attention_mask_BL, segment_ids_BL)
        masks, rotary = {}, {}
        for layer_type in set(cfg.layer_types):
            windowed = layer_type == "sliding_attention" and length > cfg.sliding_window + 1
            masks[layer_type] = sliding_window_mask(full, length, cfg.sliding_window) if windowed else full
            rotary[layer_type] = rotary_tables(position_ids_BL, cfg.head_dim, cfg.rope_theta(layer_type))
        x_BLD = self.embeddings(input_ids_BL, deterministic)
        if not self.add_pooling_layer:
            x_BMD = self.layers(x_BLD, masks, rotary, deterministic, output_positions_BM)
            return EncoderOutput(last_hidden_state=self.final_norm(x_BMD))
        if output_positions_BM is not None:
            raise ValueError("output_positions and pooling cannot be combined")
        hidden_BLD = self.final_norm(self.layers(x_BLD, masks, rotary, deterministic))
        pooled_BKD = self.pool(hidden_BLD, attention_mask_BL, segment_ids_BL, cls_positions_BK)
        return EncoderOutput(last_hidden_state=hidden_BLD, pooler_output=pooled_BKD)

    def pool(self, hidden_BLD: Array, attention_mask_BL: Array, segment_ids_BL: Array | None,
             cls_positions_BK: Array | None) -> Array:
        """The state the sequence classifier reads, [B, D] (or [B, K, D] per packed segment
        at cls_positions): the first token's, or (classifier_pooling "mean") the mean over
        the segment's real tokens."""
        if self.config.classifier_pooling == "cls":
            if cls_positions_BK is None:
                return hidden_BLD[:, 0]
            return gather_positions(hidden_BLD, cls_positions_BK)
        if cls_positions_BK is None:
            member_BKL = attention_mask_BL.astype(bool)[:, None, :]
        else:
            segments_BL = segment_ids_BL if segment_ids_BL is not None else attention_mask_BL.astype(jnp.int32)
            own_BK = jnp.take_along_axis(segments_BL, cls_positions_BK, axis=1)
            member_BKL = (segments_BL[:, None, :] == own_BK[:, :, None]) & attention_mask_BL.astype(bool)[:, None, :]
        weights_BKL = member_BKL.astype(hidden_BLD.dtype)
        sums_BKD = jnp.einsum("bkl,bld->bkd", weights_BKL, hidden_BLD)
        means_BKD = sums_BKD / jnp.maximum(weights_BKL.sum(-1, keepdims=True), 1)
        return means_BKD[:, 0] if cls_positions_BK is None else means_BKD

    def attend(self, x_BMD: Array) -> Array:
        """Scores against the token embeddings (the tied MLM decoder). [B, M, V]."""
        return self.embeddings.tok_embeddings.attend(x_BMD)
