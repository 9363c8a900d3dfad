"""The BERT encoder: embeddings, post-LayerNorm transformer layers and pooler.

Shape suffixes: B batch, L sequence length, D hidden size, N attention heads,
H head size, F intermediate (MLP) size, V vocabulary size.

Every parameter carries logical axis names (see `LOGICAL_AXES`); activations carry
`activation_*` names. Which mesh axes they map to is decided outside the model.
"""

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from flaxft.models.config import BertConfig
from flaxft.models.dropout import Dropout, dropout

Array = jax.Array

LOGICAL_AXES = {
    "vocab": "vocabulary rows of the word embeddings and the MLM output bias",
    "embed": "hidden size D, the model's residual stream",
    "position": "rows of the position embeddings",
    "token_type": "rows of the token type embeddings",
    "heads": "attention heads N",
    "kv": "size H of each attention head",
    "mlp": "intermediate size F of the feed-forward block",
    "hidden": "output features of square D x D projections (pooler, MLM transform)",
    "classes": "output classes of the NSP, classification and QA heads",
    "layers": "stacked layers when scan_layers is on",
}

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    # PyTorch's exact GELU, x/2 (1 + erf(x/sqrt 2)): on XLA:CPU erf is cheaper than the
    # erfc that jax.nn.gelu(approximate=False) evaluates (bert_base step 1.05x).
    "gelu": lambda x: 0.5 * x * (1.0 + jax.lax.erf(x * 0.7071067811865476)),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def activation(name: str) -> Callable[[Array], Array]:
    """The elementwise activation Hugging Face calls `name`."""
    return _ACTIVATIONS[name]


@flax.struct.dataclass
class BertOutput:
    """What every flaxft BERT returns; heads fill in their own fields.

    last_hidden_state [B, L, D], or [B, M, D] when the MLM heads were given M masked
    positions per row; pooler_output [B, D] (None without a pooler);
    mlm_logits [B, L, V] or [B, M, V] at masked positions; nsp_logits [B, 2];
    logits [B, num_labels] (sequence) or [B, L, num_labels] (token);
    start_logits / end_logits [B, L].
    """

    last_hidden_state: Array
    pooler_output: Array | None = None
    mlm_logits: Array | None = None
    nsp_logits: Array | None = None
    logits: Array | None = None
    start_logits: Array | None = None
    end_logits: Array | None = None


class Dense(nn.Module):
    """`nn.DenseGeneral`'s parameters and math, computed as one 2-D matrix product.

    The kernel has shape (*contracted input dims, *features) and keeps its logical axis
    names; it is reshaped to [K, F] for the product (a free bitcast). XLA's CPU backend
    canonicalises a dot over several contracted dims by transposing its operands in the
    forward and backward pass; the 2-D form avoids those copies (bert_base step 1.1x).
    """

    config: BertConfig
    features: tuple[int, ...]
    num_contracted: int
    kernel_axes: tuple[str, ...]
    bias_axes: tuple[str, ...] | None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x [..., *contracted] -> [..., *features] in the compute dtype."""
        cfg = self.config
        lead, contracted = x.shape[: x.ndim - self.num_contracted], x.shape[x.ndim - self.num_contracted :]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), self.kernel_axes),
            (*contracted, *self.features),
            cfg.weights_dtype,
        )
        k, f = math.prod(contracted), math.prod(self.features)
        y_XF = jnp.dot(x.reshape(-1, k).astype(cfg.compute_dtype), kernel.reshape(k, f).astype(cfg.compute_dtype))
        if self.bias_axes is not None:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros_init(), self.bias_axes),
                self.features,
                cfg.weights_dtype,
            )
            y_XF = y_XF + bias.reshape(f).astype(cfg.compute_dtype)
        return y_XF.reshape(*lead, *self.features)


def dense(
    config: BertConfig,
    features: int | Sequence[int],
    kernel_axes: tuple[str, ...],
    bias_axes: tuple[str, ...] | None,
    name: str,
    num_contracted: int = 1,
) -> Dense:
    """A dense layer with BERT's init and logical axis names on kernel and bias (no bias
    when `bias_axes` is None), contracting the last `num_contracted` input axes."""
    features = (features,) if isinstance(features, int) else tuple(features)
    return Dense(config, features, num_contracted, kernel_axes, bias_axes, name=name)


def layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
    """LayerNorm over D with statistics computed in float32, as PyTorch does."""
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=config.compute_dtype,
        param_dtype=config.weights_dtype,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        name=name,
    )


def embed(config: BertConfig, rows: int, axis: str, name: str) -> nn.Embed:
    return nn.Embed(
        rows,
        config.hidden_size,
        dtype=config.compute_dtype,
        param_dtype=config.weights_dtype,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(config.initializer_range), (axis, "embed")
        ),
        name=name,
    )


def segment_positions(segment_ids_BL: Array) -> Array:
    """Position of each token inside its segment: restarts at 0 where the id changes. [B, L]."""
    length = segment_ids_BL.shape[1]
    index_BL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), segment_ids_BL.shape)
    is_start_BL = jnp.concatenate(
        [jnp.ones_like(segment_ids_BL[:, :1], bool), segment_ids_BL[:, 1:] != segment_ids_BL[:, :-1]],
        axis=1,
    )
    start_BL = jax.lax.cummax(jnp.where(is_start_BL, index_BL, 0), axis=1)
    return index_BL - start_BL


def attention_mask_B1LL(attention_mask_BL: Array, segment_ids_BL: Array | None) -> Array:
    """Boolean mask [B, 1, L, L]: query q may attend to key k.

    Keys must be real tokens (attention_mask 1); with segment ids, queries and keys must
    also belong to the same packed segment.
    """
    mask_B1LL = attention_mask_BL.astype(bool)[:, None, None, :]
    if segment_ids_BL is not None:
        same_BLL = segment_ids_BL[:, :, None] == segment_ids_BL[:, None, :]
        mask_B1LL = mask_B1LL & same_BLL[:, None]
    return mask_B1LL


def gather_positions(x_BLD: Array, positions_BM: Array) -> Array:
    """Rows of x at the given positions of each sequence. [B, M, D]."""
    return jnp.take_along_axis(x_BLD, positions_BM[:, :, None], axis=1)


def gather_query_rows(mask_B1LL: Array, positions_BQ: Array) -> Array:
    """The attention mask's rows for queries at the given positions: [B, 1, Q, L]
    (a mask that does not vary over queries, [B, 1, 1, L], is returned as it is)."""
    if mask_B1LL.shape[2] == 1:
        return mask_B1LL
    return jnp.take_along_axis(mask_B1LL, positions_BQ[:, None, :, None], axis=2)


def attention_with_dropout(
    q_BLNH: Array, k_BLNH: Array, v_BLNH: Array, mask_B1LL: Array, rate: float, dropout_rng: Array
) -> Array:
    """Softmax attention with dropout on the probabilities (softmax in float32). [B, L, N, H]."""
    scale = q_BLNH.shape[-1] ** -0.5
    logits_BNLL = jnp.einsum("bqnh,bknh->bnqk", q_BLNH, k_BLNH, preferred_element_type=jnp.float32)
    logits_BNLL = jnp.where(mask_B1LL, logits_BNLL * scale, jnp.finfo(jnp.float32).min)
    probs_BNLL = jax.nn.softmax(logits_BNLL, axis=-1)
    probs_BNLL = dropout(probs_BNLL, rate, dropout_rng)
    return jnp.einsum("bnqk,bknh->bqnh", probs_BNLL.astype(v_BLNH.dtype), v_BLNH)


class BertEmbeddings(nn.Module):
    """Word + position + token type embeddings, LayerNorm, dropout."""

    config: BertConfig

    def setup(self):
        cfg = self.config
        self.word_embeddings = embed(cfg, cfg.vocab_size, "vocab", "word_embeddings")
        self.position_embeddings = embed(
            cfg, cfg.max_position_embeddings, "position", "position_embeddings"
        )
        self.token_type_embeddings = embed(
            cfg, cfg.type_vocab_size, "token_type", "token_type_embeddings"
        )
        self.LayerNorm = layer_norm(cfg, "LayerNorm")
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def __call__(
        self, input_ids_BL: Array, token_type_ids_BL: Array, position_ids_BL: Array, deterministic: bool
    ) -> Array:
        """Returns embeddings [B, L, D]."""
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
    reads a few positions). Evaluation, and training without attention dropout, go through
    `jax.nn.dot_product_attention` (cuDNN flash attention on GPUs). Training with
    attention dropout takes an explicit softmax so the configured dropout is applied.
    """

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BLD: Array, mask_B1LL: Array, query_positions_BQ: Array | None = None) -> Array:
        """x [B, L, D], mask [B, 1, L or 1, L] -> [B, L, D] (or [B, Q, D] at query_positions)."""
        cfg = self.config
        x_BQD = x_BLD
        if query_positions_BQ is not None:
            x_BQD = gather_positions(x_BLD, query_positions_BQ)
            mask_B1LL = gather_query_rows(mask_B1LL, query_positions_BQ)
        heads = (cfg.num_attention_heads, cfg.head_dim)
        qkv_axes = ("embed", "heads", "kv"), ("heads", "kv")
        act_axes = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
        q_BQNH, k_BLNH, v_BLNH = (
            nn.with_logical_constraint(dense(cfg, heads, *qkv_axes, name=name)(x), act_axes)
            for name, x in (("query", x_BQD), ("key", x_BLD), ("value", x_BLD))
        )
        rate = cfg.attention_probs_dropout_prob
        if self.deterministic or rate == 0.0:
            ctx_BQNH = jax.nn.dot_product_attention(q_BQNH, k_BLNH, v_BLNH, mask=mask_B1LL)
        else:
            ctx_BQNH = attention_with_dropout(q_BQNH, k_BLNH, v_BLNH, mask_B1LL, rate, self.make_rng("dropout"))
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
        self, x_BLD: Array, mask_B1LL: Array, query_positions_BQ: Array | None = None
    ) -> tuple[Array, None]:
        """x [B, L, D] -> [B, L, D], or [B, Q, D] computing only the rows at query_positions."""
        x_BQD = BertSelfAttention(self.config, self.deterministic, name="attention")(
            x_BLD, mask_B1LL, query_positions_BQ
        )
        x_BQD = BertMLP(self.config, self.deterministic, name="mlp")(x_BQD)
        x_BQD = nn.with_logical_constraint(x_BQD, ("activation_batch", "activation_length", "activation_embed"))
        return x_BQD, None


class BertEncoder(nn.Module):
    """The layer stack: `layer_{i}` submodules, or one scanned `layers` with a leading layer axis."""

    config: BertConfig

    @nn.compact
    def __call__(
        self, x_BLD: Array, mask_B1LL: Array, deterministic: bool, output_positions_BQ: Array | None = None
    ) -> Array:
        """Runs every layer over x [B, L, D] with the attention mask [B, 1, L, L].

        Returns [B, L, D], or [B, Q, D] at output_positions: then the last layer computes
        only those rows (with scan_layers it computes every row, and they are gathered).
        """
        cfg = self.config
        layer = BertLayer
        if cfg.remat_policy != "none":
            layer = nn.remat(layer, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(
                layer,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=cfg.num_hidden_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x_BLD, _ = stack(cfg, deterministic, name="layers")(x_BLD, mask_B1LL)
            return x_BLD if output_positions_BQ is None else gather_positions(x_BLD, output_positions_BQ)
        last = cfg.num_hidden_layers - 1
        for i in range(cfg.num_hidden_layers):
            positions_BQ = output_positions_BQ if i == last else None
            x_BLD, _ = layer(cfg, deterministic, name=f"layer_{i}")(x_BLD, mask_B1LL, positions_BQ)
        return x_BLD


class BertModule(nn.Module):
    """Embeddings, encoder and (optionally) the tanh pooler over the first token."""

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
    ) -> BertOutput:
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
            attention_mask_BL = (
                segment_ids_BL > 0 if segment_ids_BL is not None else jnp.ones_like(input_ids_BL)
            )
        if token_type_ids_BL is None:
            token_type_ids_BL = jnp.zeros_like(input_ids_BL)
        if position_ids_BL is None:
            position_ids_BL = (
                segment_positions(segment_ids_BL)
                if segment_ids_BL is not None
                else jnp.broadcast_to(jnp.arange(input_ids_BL.shape[1]), input_ids_BL.shape)
            )
        x_BLD = self.embeddings(input_ids_BL, token_type_ids_BL, position_ids_BL, deterministic)
        mask_B1LL = attention_mask_B1LL(attention_mask_BL, segment_ids_BL)
        if not self.add_pooling_layer:
            if cls_positions_BK is not None:
                raise ValueError("cls_positions needs a model with a pooler")
            return BertOutput(last_hidden_state=self.encoder(x_BLD, mask_B1LL, deterministic, output_positions_BM))
        pooled_BK = cls_positions_BK
        if pooled_BK is None:
            pooled_BK = jnp.zeros((input_ids_BL.shape[0], 1), jnp.int32)
        if output_positions_BM is None:
            hidden_BLD = self.encoder(x_BLD, mask_B1LL, deterministic)
            first_BKD = gather_positions(hidden_BLD, pooled_BK)
        else:
            rows_BQ = jnp.concatenate([pooled_BK, output_positions_BM.astype(jnp.int32)], axis=1)
            rows_BQD = self.encoder(x_BLD, mask_B1LL, deterministic, rows_BQ)
            first_BKD, hidden_BLD = jnp.split(rows_BQD, [pooled_BK.shape[1]], axis=1)
        pooled_BKD = jnp.tanh(self.pooler(first_BKD))
        if cls_positions_BK is None:
            pooled_BKD = pooled_BKD[:, 0]
        return BertOutput(last_hidden_state=hidden_BLD, pooler_output=pooled_BKD)

    def attend(self, x_BMD: Array) -> Array:
        """Scores against the word embeddings (the tied MLM decoder). [B, M, V]."""
        return self.embeddings.word_embeddings.attend(x_BMD)

