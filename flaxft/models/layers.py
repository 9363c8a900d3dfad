"""Building blocks every family uses: dense layers (with LoRA adapters where the config
asks), LayerNorm, embeddings, activations, segment positions, row gathers, and the logical
axis names parameters carry.

Shape suffixes: B batch, L sequence length, D hidden size, K contracted size, F output
features, R LoRA rank, M gathered positions. Which mesh axes the logical names map to is
decided outside the models (`flaxft.sharding`).
"""

import math
import re
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxft.models.dropout import dropout
from flaxft.models.family import ModelConfig
from flaxft.models.matmul import matmul, matmul_transposed

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
    "fused": "the parts of a fused kernel (ModernBERT's query/key/value, GLU input/gate)",
    "lora": "rank R of a LoRA adapter's factors",
}
LORA_PARAMS = ("lora_a", "lora_b")  # a LoRA dense layer's parameters besides its kernel and bias

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    # PyTorch's exact GELU, x/2 (1 + erf(x/sqrt 2)): on XLA:CPU erf is cheaper than the
    # erfc that jax.nn.gelu(approximate=False) evaluates (README, Benchmarks).
    "gelu": lambda x: 0.5 * x * (1.0 + jax.lax.erf(x * 0.7071067811865476)),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}
ACTIVATIONS = tuple(_ACTIVATIONS)


def activation(name: str) -> Callable[[Array], Array]:
    """The elementwise activation Hugging Face calls `name`."""
    return _ACTIVATIONS[name]


class Dense(nn.Module):
    """`nn.DenseGeneral`'s parameters and math, computed as one 2-D matrix product.

    The kernel has shape (*contracted input dims, *features) and keeps its logical axis
    names; it is reshaped to [K, F] for the product (a free bitcast). XLA's CPU backend
    canonicalises a dot over several contracted dims by transposing its operands in the
    forward and backward pass; the 2-D form avoids those copies (README, Benchmarks).

    LoRA (Hu et al. 2021): when `config.lora_rank` R > 0 and the kernel's parameter path
    ("/"-joined module path and "kernel"; under scan_layers the scanned stack's, e.g.
    `bert/encoder/layers/attention/query/kernel`) matches `config.lora_targets`, the layer
    also has `lora_a` (*contracted, R) and `lora_b` (R, *features), with the kernel's
    logical axes and "lora" for R, and adds (lora_alpha / R) * dropout(x) A B. A starts
    as PEFT's (kaiming-uniform, a = sqrt 5: U(+-1/sqrt K)), B at zero, so a fresh adapter
    changes nothing. The adapter's dropout (lora_dropout) draws from the "dropout" rng: it
    is on when the model is applied with one (training) and off without (evaluation).
    With the kernel frozen (not differentiated), the backward pass computes only dx
    through it and the rank-R products that A and B need.
    """

    config: ModelConfig
    features: tuple[int, ...]
    num_contracted: int
    kernel_axes: tuple[str, ...]
    bias_axes: tuple[str, ...] | None
    init_std: float | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x [..., *contracted] -> [..., *features] in the compute dtype (float32 accumulation)."""
        cfg = self.config
        lead, contracted = x.shape[: x.ndim - self.num_contracted], x.shape[x.ndim - self.num_contracted :]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(initializer(cfg, self.init_std), self.kernel_axes),
            (*contracted, *self.features),
            cfg.weights_dtype,
        )
        k, f = math.prod(contracted), math.prod(self.features)
        x_XK = x.reshape(-1, k).astype(cfg.compute_dtype)
        bias_F = None
        if self.bias_axes is not None:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros_init(), self.bias_axes),
                self.features,
                cfg.weights_dtype,
            )
            bias_F = bias.reshape(f)
        y_XF = matmul(x_XK, kernel.reshape(k, f), cfg.compute_dtype, bias_F)
        if cfg.lora_rank and re.search(cfg.lora_targets, "/".join((*self.scope.path, "kernel"))):
            y_XF = y_XF + self.lora(x_XK, contracted)
        return y_XF.reshape(*lead, *self.features)

    def lora(self, x_XK: Array, contracted: tuple[int, ...]) -> Array:
        """The adapter's term (lora_alpha / R) * dropout(x) A B [X, F] of x [X, K]."""
        cfg, r, k = self.config, self.config.lora_rank, x_XK.shape[1]
        n = len(contracted)
        bound = 1.0 / math.sqrt(k)
        a = self.param(
            "lora_a",
            nn.with_logical_partitioning(
                lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound),
                (*self.kernel_axes[:n], "lora"),
            ),
            (*contracted, r),
            cfg.weights_dtype,
        )
        b = self.param(
            "lora_b",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("lora", *self.kernel_axes[n:])),
            (r, *self.features),
            cfg.weights_dtype,
        )
        if cfg.lora_dropout and self.has_rng("dropout"):
            x_XK = dropout(x_XK, cfg.lora_dropout, self.make_rng("dropout"))
        h_XR = matmul(x_XK, a.reshape(k, r), cfg.compute_dtype) * (cfg.lora_alpha / r)
        return matmul(h_XR, b.reshape(r, -1), cfg.compute_dtype)


def dense(
    config: ModelConfig,
    features: int | Sequence[int],
    kernel_axes: tuple[str, ...],
    bias_axes: tuple[str, ...] | None,
    name: str,
    num_contracted: int = 1,
    init_std: float | None = None,
) -> Dense:
    """A dense layer with logical axis names on kernel and bias (no bias when `bias_axes`
    is None), contracting the last `num_contracted` input axes; kernels start as
    `initializer(config, init_std)` draws."""
    features = (features,) if isinstance(features, int) else tuple(features)
    return Dense(config, features, num_contracted, kernel_axes, bias_axes, init_std, name=name)


def initializer(config: ModelConfig, std: float | None = None) -> nn.initializers.Initializer:
    """Fresh weights: normal with standard deviation `std` (default initializer_range),
    cut at +-initializer_cutoff_factor standard deviations when the config has that field
    (ModernBERT's truncated normal, as torch's trunc_normal_: not rescaled after the cut)."""
    std = config.initializer_range if std is None else std
    cutoff = getattr(config, "initializer_cutoff_factor", None)
    if cutoff is None:
        return nn.initializers.normal(std)

    def init(key, shape, dtype=jnp.float32):
        return (std * jax.random.truncated_normal(key, -cutoff, cutoff, shape, jnp.float32)).astype(dtype)

    return init


def layer_norm(config: ModelConfig, name: str, epsilon: float | None = None, use_bias: bool = True) -> nn.LayerNorm:
    """LayerNorm over D (epsilon: default `config.layer_norm_eps`; with or without a bias)
    with statistics computed in float32, as PyTorch does."""
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps if epsilon is None else epsilon,
        use_bias=use_bias,
        dtype=config.compute_dtype,
        param_dtype=config.weights_dtype,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        name=name,
    )


class Embed(nn.Embed):
    """`nn.Embed` that looks rows up in the table's own dtype and casts them (its gradient,
    a scatter-add, accumulates in float32, not in a 16-bit compute dtype), and whose
    `attend` (the tied decoder) is `flaxft.models.matmul`'s product."""

    def __call__(self, inputs: Array) -> Array:
        """Rows of the table at integer `inputs` [...]: [..., features] in the compute dtype."""
        if self.num_embeddings == 1:
            return jnp.broadcast_to(self.embedding.astype(self.dtype), (*inputs.shape, self.features))
        return jnp.take(self.embedding, inputs, axis=0).astype(self.dtype)

    def attend(self, query: Array) -> Array:
        """Scores of query [..., D] against every row: [..., rows], float32 (products in
        the compute dtype)."""
        scores = matmul_transposed(query.reshape(-1, query.shape[-1]), self.embedding, self.dtype)
        return scores.reshape(*query.shape[:-1], self.num_embeddings)


def embed(config: ModelConfig, rows: int, axis: str, name: str, features: int | None = None) -> Embed:
    """An embedding table [rows, features] (default: D) whose rows carry logical axis `axis`."""
    return Embed(
        rows,
        features or config.hidden_size,
        dtype=config.compute_dtype,
        param_dtype=config.weights_dtype,
        embedding_init=nn.with_logical_partitioning(initializer(config), (axis, "embed")),
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


def default_attention_mask(input_ids_BL: Array, segment_ids_BL: Array | None) -> Array:
    """Every token real, or (packed rows) those of a segment: segment_ids > 0. [B, L]."""
    return segment_ids_BL > 0 if segment_ids_BL is not None else jnp.ones_like(input_ids_BL)


def default_position_ids(input_ids_BL: Array, segment_ids_BL: Array | None) -> Array:
    """0..L-1, restarting at 0 in each packed segment. [B, L]."""
    if segment_ids_BL is not None:
        return segment_positions(segment_ids_BL)
    return jnp.broadcast_to(jnp.arange(input_ids_BL.shape[1]), input_ids_BL.shape)


def gather_positions(x_BLD: Array, positions_BM: Array) -> Array:
    """Rows of x at the given positions of each sequence. [B, M, D]."""
    return jnp.take_along_axis(x_BLD, positions_BM[:, :, None], axis=1)


@jax.custom_vjp
def materialized_cotangent(x: Array) -> Array:
    """The identity on x, whose cotangent the backward pass computes once, into a buffer.

    Put on a pre-LayerNorm layer's residual input. The residual stream's gradient is a
    chain of adds through every later layer; XLA:CPU fuses that chain, duplicated, into
    each layer's LayerNorm backward, so every layer re-adds the terms of all later ones
    (work quadratic in the depth: ModernBERT-base's layer 10 read 151 buffers; README,
    Benchmarks). The backward pass returns rem(g, inf), which equals g for every finite g
    (an infinite one becomes NaN: non-finite either way) and which XLA never duplicates
    (a floating-point remainder counts as expensive) and does not simplify away, as it does
    optimization barriers (removed before fusion on CPU) and divisions by a runtime 1
    (rewritten as multiplications)."""
    return x


def _materialized_cotangent_fwd(x):
    return x, None


def _materialized_cotangent_bwd(_, g):
    return (jax.lax.rem(g, jnp.asarray(jnp.inf, g.dtype)),)


materialized_cotangent.defvjp(_materialized_cotangent_fwd, _materialized_cotangent_bwd)
