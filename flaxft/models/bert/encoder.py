"""The BERT encoder: embeddings, post-LayerNorm transformer layers and pooler.

Shape suffixes: B batch, L sequence length, D hidden size, N attention heads,
H head size, F intermediate (MLP) size, V vocabulary size.

Every parameter carries logical axis names (`flaxft.models.layers.LOGICAL_AXES`);
activations carry `activation_*` names. Which mesh axes they map to is decided outside
the model.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxft.models.attention import Mask, attention, attention_masks, gather_query_rows
from flaxft.models.bert.configuration import BertConfig
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
)

Array = jax.Array


class BertEmbeddings(nn.Module):
    """Word + position + token type embeddings, LayerNorm, dropout; `features` wide
    (default: hidden_size; ELECTRA's are embedding_size)."""

    config: BertConfig
    features: int | None = None

    def setup(self):
        cfg, width = self.config, self.features
        self.word_embeddings = embed(cfg, cfg.vocab_size, "vocab", "word_embeddings", width)
        self.position_embeddings = embed(cfg, cfg.max_position_embeddings, "position", "position_embeddings", width)
        self.token_type_embeddings = embed(cfg, cfg.type_vocab_size, "token_type", "token_type_embeddings", width)
        self.LayerNorm = layer_norm(cfg, "LayerNorm")
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def __call__(
        self, input_ids_BL: Array, token_type_ids_BL: Array, position_ids_BL: Array, deterministic: bool
    ) -> Array:
        """Returns embeddings [B, L, features]."""
        x_BLD = (
            self.word_embeddings(input_ids_BL)
            + self.position_embeddings(position_ids_BL)
            + self.token_type_embeddings(token_type_ids_BL)
        )
        x_BLD = self.dropout(self.LayerNorm(x_BLD), deterministic=deterministic)
        return nn.with_logical_constraint(x_BLD, ("activation_batch", "activation_length", "activation_embed"))


class BertSelfAttention(nn.Module):
    """Multi-head self-attention, output projection, residual and LayerNorm.

    With `query_positions_BQ` only those rows are computed: every position still serves
    as a key and value, and the output is [B, Q, D] (the last layer of a model whose loss
    reads a few positions). Attention is `flaxft.models.attention.attention`, the
    implementation config.attention resolves to (the configured dropout on the
    probabilities in training).
    """

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BLD: Array, mask: Mask, query_positions_BQ: Array | None = None) -> Array:
        """x [B, L, D], mask (allowed [B, 1, L or 1, L]) -> [B, L, D] (or [B, Q, D] at query_positions)."""
        cfg = self.config
        x_BQD = x_BLD
        if query_positions_BQ is not None:
            x_BQD = gather_positions(x_BLD, query_positions_BQ)
            mask = gather_query_rows(mask, query_positions_BQ)
        heads = (cfg.num_attention_heads, cfg.head_dim)
        qkv_axes = ("embed", "heads", "kv"), ("heads", "kv")
        act_axes = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
        q_BQNH, k_BLNH, v_BLNH = (
            nn.with_logical_constraint(dense(cfg, heads, *qkv_axes, name=name)(x), act_axes)
            for name, x in (("query", x_BQD), ("key", x_BLD), ("value", x_BLD))
        )
        rate = cfg.attention_probs_dropout_prob
        dropout_rng = None if self.deterministic or rate == 0.0 else self.make_rng("dropout")
        implementation = cfg.attention_implementation(training_dropout=dropout_rng is not None)
        ctx_BQNH = attention(q_BQNH, k_BLNH, v_BLNH, mask, rate, dropout_rng, implementation)
        out_BQD = dense(cfg, cfg.hidden_size, ("heads", "kv", "embed"), ("embed",), "output", num_contracted=2)(ctx_BQNH)
        out_BQD = Dropout(cfg.hidden_dropout_prob)(out_BQD, deterministic=self.deterministic)
        return layer_norm(cfg, "LayerNorm")(x_BQD + out_BQD)


class BertMLP(nn.Module):
    """Feed-forward block: D -> F -> D, residual and LayerNorm."""

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BLD: Array) -> Array:
        cfg = self.config
        h_BLF = dense(cfg, cfg.intermediate_size, ("embed", "mlp"), ("mlp",), "intermediate")(x_BLD)
        h_BLF = nn.with_logical_constraint(
            activation(cfg.hidden_act)(h_BLF), ("activation_batch", "activation_length", "activation_mlp")
        )
        out_BLD = dense(cfg, cfg.hidden_size, ("mlp", "embed"), ("embed",), "output")(h_BLF)
        out_BLD = Dropout(cfg.hidden_dropout_prob)(out_BLD, deterministic=self.deterministic)
        return layer_norm(cfg, "LayerNorm")(x_BLD + out_BLD)


class BertLayer(nn.Module):
    """One post-LN transformer layer. Returns (x, None) so it can be the body of nn.scan."""

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(
        self, x_BLD: Array, mask: Mask, query_positions_BQ: Array | None = None
    ) -> tuple[Array, None]:
        """x [B, L, D] -> [B, L, D], or [B, Q, D] computing only the rows at query_positions."""
        x_BQD = BertSelfAttention(self.config, self.deterministic, name="attention")(
            x_BLD, mask, query_positions_BQ
        )
        x_BQD = BertMLP(self.config, self.deterministic, name="mlp")(x_BQD)
        x_BQD = nn.with_logical_constraint(x_BQD, ("activation_batch", "activation_length", "activation_embed"))
        return x_BQD, None


class BertEncoder(nn.Module):
    """The layer stack: `layer_{i}` submodules, or one scanned `layers` with a leading layer axis."""

    config: BertConfig

    @nn.compact
    def __call__(
        self, x_BLD: Array, mask: Mask, deterministic: bool, output_positions_BQ: Array | None = None
    ) -> Array:
        """Runs every layer over x [B, L, D] with the attention mask (allowed [B, 1, L, L]).

        Returns [B, L, D], or [B, Q, D] at output_positions: then the last layer computes
        only those rows (with scan_layers it computes every row, and they are gathered).
        """
        cfg = self.config
        layer = BertLayer
        if cfg.remat_policy != "none":
            layer = nn.remat(layer, policy=REMAT[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(
                layer,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=cfg.num_hidden_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x_BLD, _ = stack(cfg, deterministic, name="layers")(x_BLD, mask)
            return x_BLD if output_positions_BQ is None else gather_positions(x_BLD, output_positions_BQ)
        last = cfg.num_hidden_layers - 1
        for i in range(cfg.num_hidden_layers):
            positions_BQ = output_positions_BQ if i == last else None
            x_BLD, _ = layer(cfg, deterministic, name=f"layer_{i}")(x_BLD, mask, positions_BQ)
        return x_BLD


class BertModule(nn.Module):
    """Embeddings, encoder and (optionally) the tanh pooler over the first token.

    Families built on BERT's encoder (RoBERTa, ELECTRA) subclass it and override
    `default_position_ids` and `embed`."""

    config: BertConfig
    add_pooling_layer: bool = True

    def setup(self):
        self.embeddings = BertEmbeddings(self.config)
        self.encoder = BertEncoder(self.config)
        if self.add_pooling_layer:
            self.pooler = dense(self.config, self.config.hidden_size, ("embed", "hidden"), ("hidden",), "pooler")

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
        token_type_ids_BL: [B, L] (default 0). position_ids_BL: [B, L] (default: 0..L-1,
        restarting at 0 in each segment). segment_ids_BL: [B, L] ids of sequences packed
        into one row (0 = padding); tokens attend only within their own segment.
        cls_positions_BK: [B, K] positions of each packed segment's first token; the pooler
        then pools each of them (pooler_output [B, K, D]).
        output_positions_BM: [B, M] the only positions whose final states are needed (an
        MLM loss's masked tokens): last_hidden_state is then [B, M, D] at them, and the
        last layer computes only those rows and the pooled first token(s).
        Returns last_hidden_state [B, L, D] (or [B, M, D]) and pooler_output [B, D] (or [B, K, D]).
        """
        if attention_mask_BL is None:
            attention_mask_BL = default_attention_mask(input_ids_BL, segment_ids_BL)
        if token_type_ids_BL is None:
            token_type_ids_BL = jnp.zeros_like(input_ids_BL)
        if position_ids_BL is None:
            position_ids_BL = self.default_position_ids(input_ids_BL, segment_ids_BL)
        x_BLD = self.embed(input_ids_BL, token_type_ids_BL, position_ids_BL, deterministic)
        mask = attention_masks(attention_mask_BL, segment_ids_BL)
        if not self.add_pooling_layer:
            if cls_positions_BK is not None:
                raise ValueError("cls_positions needs a model with a pooler")
            return EncoderOutput(last_hidden_state=self.encoder(x_BLD, mask, deterministic, output_positions_BM))
        pooled_BK = cls_positions_BK
        if pooled_BK is None:
            pooled_BK = jnp.zeros((input_ids_BL.shape[0], 1), jnp.int32)
        if output_positions_BM is None:
            hidden_BLD = self.encoder(x_BLD, mask, deterministic)
            first_BKD = gather_positions(hidden_BLD, pooled_BK)
        else:
            rows_BQ = jnp.concatenate([pooled_BK, output_positions_BM.astype(jnp.int32)], axis=1)
            rows_BQD = self.encoder(x_BLD, mask, deterministic, rows_BQ)
            first_BKD, hidden_BLD = jnp.split(rows_BQD, [pooled_BK.shape[1]], axis=1)
        pooled_BKD = jnp.tanh(self.pooler(first_BKD))
        if cls_positions_BK is None:
            pooled_BKD = pooled_BKD[:, 0]
        return EncoderOutput(last_hidden_state=hidden_BLD, pooler_output=pooled_BKD)

    def default_position_ids(self, input_ids_BL: Array, segment_ids_BL: Array | None) -> Array:
        """0..L-1, restarting at 0 in each packed segment. [B, L]."""
        return default_position_ids(input_ids_BL, segment_ids_BL)

    def embed(self, input_ids_BL: Array, token_type_ids_BL: Array, position_ids_BL: Array,
              deterministic: bool) -> Array:
        """The encoder's input [B, L, D]."""
        return self.embeddings(input_ids_BL, token_type_ids_BL, position_ids_BL, deterministic)

    def attend(self, x_BMD: Array) -> Array:
        """Scores against the word embeddings (the tied MLM decoder). [B, M, V]."""
        return self.embeddings.word_embeddings.attend(x_BMD)

