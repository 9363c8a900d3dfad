"""BertConfig: Hugging Face `BertConfig` field names plus flaxft's training options."""

import dataclasses
from typing import Any

import jax.numpy as jnp

from flaxft.errors import InputError

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish", "tanh")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Model hyperparameters. Field names follow `transformers.BertConfig`.

    Training options (not in Hugging Face's config):
      dtype: compute dtype of activations ("float32", "bfloat16").
      param_dtype: dtype parameters are stored in.
      scan_layers: stack the encoder layers under `nn.scan` (one compiled layer body).
      remat_policy: rematerialisation of each layer in the backward pass:
        "none", "full" (save nothing), "dots" (save matmul outputs),
        "dots_no_batch" (save matmul outputs without batch dimensions).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    tie_word_embeddings: bool = True
    num_labels: int = 2
    id2label: tuple[str, ...] = ()
    classifier_dropout: float | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise InputError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise InputError(f"model.hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}")
        if self.remat_policy not in REMAT_POLICIES:
            raise InputError(
                f"model.remat_policy {self.remat_policy!r} is not one of {REMAT_POLICIES}"
            )
        for field in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, field))
            except TypeError:
                raise InputError(f"model.{field} {getattr(self, field)!r} is not a dtype") from None
        if self.id2label and len(self.id2label) != self.num_labels:
            raise InputError(
                f"model.id2label has {len(self.id2label)} names but model.num_labels is "
                f"{self.num_labels}"
            )
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "intermediate_size", "max_position_embeddings", "type_vocab_size",
                      "num_labels"):
            if getattr(self, field) < 1:
                raise InputError(f"model.{field} must be positive, got {getattr(self, field)}")
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            rate = getattr(self, field)
            if rate is not None and not 0.0 <= rate < 1.0:
                raise InputError(f"model.{field} must be in [0, 1), got {rate}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weights_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        d = dataclasses.asdict(self)
        d["id2label"] = list(self.id2label)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BertConfig":
        """Builds a config from `to_dict()` output; unknown keys are an InputError."""
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise InputError(f"unknown model config field(s): {', '.join(unknown)}")
        d = dict(d)
        if "id2label" in d:
            d["id2label"] = tuple(d["id2label"])
        return cls(**d)

    def replace(self, **changes: Any) -> "BertConfig":
        return dataclasses.replace(self, **changes)
