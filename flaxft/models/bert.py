"""The BERT encoder: embeddings, post-LayerNorm transformer layers and pooler.

Shape suffixes: B batch, L sequence length, D hidden size, N attention heads,
H head size, F intermediate (MLP) size, V vocabulary size.

Every parameter carries logical axis names (see `LOGICAL_AXES`); activations carry
`activation_*` names. Which mesh axes they map to is decided outside the model.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from flaxft.models.config import BertConfig

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
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
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

    last_hidden_state [B, L, D]; pooler_output [B, D] (None without a pooler);
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


def dense(
    config: BertConfig,
    features: int | Sequence[int],
    kernel_axes: tuple[str, ...],
    bias_axes: tuple[str, ...] | None,
    name: str,
    axis: int | Sequence[int] = -1,
) -> nn.DenseGeneral:
    """A DenseGeneral with BERT's init and logical axis names on kernel and bias
    (no bias when `bias_axes` is None)."""
    return nn.DenseGeneral(
        features,
        axis=axis,
        use_bias=bias_axes is not None,
        dtype=config.compute_dtype,
        param_dtype=config.weights_dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(config.initializer_range), kernel_axes
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), bias_axes or ()),
        name=name,
    )


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


def attention_with_dropout(
    q_BLNH: Array, k_BLNH: Array, v_BLNH: Array, mask_B1LL: Array, rate: float, dropout_rng: Array
) -> Array:
    """Softmax attention with dropout on the probabilities (softmax in float32). [B, L, N, H]."""
    scale = q_BLNH.shape[-1] ** -0.5
    logits_BNLL = jnp.einsum("bqnh,bknh->bnqk", q_BLNH, k_BLNH, preferred_element_type=jnp.float32)
    logits_BNLL = jnp.where(mask_B1LL, logits_BNLL * scale, jnp.finfo(jnp.float32).min)
    probs_BNLL = jax.nn.softmax(logits_BNLL, axis=-1)
    if rate > 0.0:
        keep_BNLL = jax.random.bernoulli(dropout_rng, 1.0 - rate, probs_BNLL.shape)
        probs_BNLL = jnp.where(keep_BNLL, probs_BNLL / (1.0 - rate), 0.0)
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
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

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

    Evaluation, and training without attention dropout, go through
    `jax.nn.dot_product_attention` (cuDNN flash attention on GPUs). Training with
    attention dropout takes an explicit softmax so the configured dropout is applied.
    """

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BLD: Array, mask_B1LL: Array) -> Array:
        cfg = self.config
        heads = (cfg.num_attention_heads, cfg.head_dim)
        qkv_axes = ("embed", "heads", "kv"), ("heads", "kv")
        act_axes = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
        q_BLNH, k_BLNH, v_BLNH = (
            nn.with_logical_constraint(dense(cfg, heads, *qkv_axes, name=name)(x_BLD), act_axes)
            for name in ("query", "key", "value")
        )
        rate = cfg.attention_probs_dropout_prob
        if self.deterministic or rate == 0.0:
            ctx_BLNH = jax.nn.dot_product_attention(q_BLNH, k_BLNH, v_BLNH, mask=mask_B1LL)
        else:
            ctx_BLNH = attention_with_dropout(q_BLNH, k_BLNH, v_BLNH, mask_B1LL, rate, self.make_rng("dropout"))
        out_BLD = dense(cfg, cfg.hidden_size, ("heads", "kv", "embed"), ("embed",), "output", axis=(-2, -1))(ctx_BLNH)
        out_BLD = nn.Dropout(cfg.hidden_dropout_prob)(out_BLD, deterministic=self.deterministic)
        return layer_norm(cfg, "LayerNorm")(x_BLD + out_BLD)


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
        out_BLD = nn.Dropout(cfg.hidden_dropout_prob)(out_BLD, deterministic=self.deterministic)
        return layer_norm(cfg, "LayerNorm")(x_BLD + out_BLD)


class BertLayer(nn.Module):
    """One post-LN transformer layer. Returns (x, None) so it can be the body of nn.scan."""

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BLD: Array, mask_B1LL: Array) -> tuple[Array, None]:
        x_BLD = BertSelfAttention(self.config, self.deterministic, name="attention")(x_BLD, mask_B1LL)
        x_BLD = BertMLP(self.config, self.deterministic, name="mlp")(x_BLD)
        x_BLD = nn.with_logical_constraint(x_BLD, ("activation_batch", "activation_length", "activation_embed"))
        return x_BLD, None


class BertEncoder(nn.Module):
    """The layer stack: `layer_{i}` submodules, or one scanned `layers` with a leading layer axis."""

    config: BertConfig

    @nn.compact
    def __call__(self, x_BLD: Array, mask_B1LL: Array, deterministic: bool) -> Array:
        """Runs every layer over x [B, L, D] with the attention mask [B, 1, L, L]."""
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
            return x_BLD
        for i in range(cfg.num_hidden_layers):
            x_BLD, _ = layer(cfg, deterministic, name=f"layer_{i}")(x_BLD, mask_B1LL)
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
    ) -> BertOutput:
        """Encodes a batch.

        input_ids_BL: token ids [B, L]. attention_mask_BL: 1 for real tokens [B, L]
        (default: all real, or segment_ids > 0 when segment ids are given).
        token_type_ids_BL: [B, L] (default 0). position_ids_BL: [B, L] (default: 0..L-1,
        restarting at 0 in each segment). segment_ids_BL: [B, L] ids of sequences packed
        into one row (0 = padding); tokens attend only within their own segment.
        cls_positions_BK: [B, K] positions of each packed segment's first token; the pooler
        then pools each of them (pooler_output [B, K, D]).
        Returns last_hidden_state [B, L, D] and pooler_output [B, D] (or [B, K, D]).
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
        x_BLD = self.encoder(x_BLD, mask_B1LL, deterministic)
        if not self.add_pooling_layer:
            if cls_positions_BK is not None:
                raise ValueError("cls_positions needs a model with a pooler")
            return BertOutput(last_hidden_state=x_BLD)
        if cls_positions_BK is None:
            first_BD = x_BLD[:, 0]
        else:
            first_BD = jnp.take_along_axis(x_BLD, cls_positions_BK[:, :, None], axis=1)  # [B, K, D]
        return BertOutput(last_hidden_state=x_BLD, pooler_output=jnp.tanh(self.pooler(first_BD)))

    def attend(self, x_BMD: Array) -> Array:
        """Scores against the word embeddings (the tied MLM decoder). [B, M, V]."""
        return self.embeddings.word_embeddings.attend(x_BMD)

