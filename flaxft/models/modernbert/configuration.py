"""ModernBertConfig: Hugging Face `ModernBertConfig` field names (transformers 5) plus
flaxft's training options; defaults are ModernBERT-base's."""

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from flaxft.errors import InputError
from flaxft.models.family import ModelConfig
from flaxft.models.layers import ACTIVATIONS

LAYER_TYPES = ("full_attention", "sliding_attention")
GLOBAL_ATTENTION_EVERY = 3  # transformers' pattern when a config.json names no layer_types


def default_layer_types(num_layers: int, every: int = GLOBAL_ATTENTION_EVERY) -> tuple[str, ...]:
    """Global attention on every `every`-th layer (from layer 0), sliding windows between."""
    return tuple("sliding_attention" if i % every else "full_attention" for i in range(num_layers))


@dataclasses.dataclass(frozen=True)
class ModernBertConfig(ModelConfig):
    """ModernBERT's hyperparameters (Warner et al. 2024, arXiv:2412.13663), named as
    `transformers.ModernBertConfig` names them, with two exceptions that config.json
    spells differently: `global_rope_theta` and `local_rope_theta` are the `rope_theta`
    of `rope_parameters["full_attention"]` and `["sliding_attention"]` (read and written
    by `hf_values` / `hf_dict`).

    layer_types: per layer "full_attention" (global) or "sliding_attention" (a window of
        `local_attention` tokens: each token sees local_attention // 2 on either side);
        empty: global on every third layer, as transformers defaults.
    """

    DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = (
        "embedding_dropout", "attention_dropout", "mlp_dropout", "classifier_dropout"
    )
    ATTENTION_DROPOUT_FIELD: ClassVar[str] = "attention_dropout"

    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    pad_token_id: int = 50283
    eos_token_id: int = 50282
    bos_token_id: int = 50281
    cls_token_id: int = 50281
    sep_token_id: int = 50282
    attention_bias: bool = False
    attention_dropout: float = 0.0
    layer_types: tuple[str, ...] = ()
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    local_attention: int = 128
    embedding_dropout: float = 0.0
    mlp_bias: bool = False
    mlp_dropout: float = 0.0
    decoder_bias: bool = True
    classifier_pooling: str = "cls"
    classifier_dropout: float = 0.0
    classifier_bias: bool = False
    classifier_activation: str = "gelu"
    tie_word_embeddings: bool = True

    def __post_init__(self):
        object.__setattr__(self, "layer_types",
                           tuple(self.layer_types) or default_layer_types(self.num_hidden_layers))
        super().__post_init__()
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "intermediate_size", "max_position_embeddings", "local_attention"):
            if getattr(self, field) < 1:
                raise InputError(f"model.{field} must be positive, got {getattr(self, field)}")
        if self.hidden_size % self.num_attention_heads:
            raise InputError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                             f"model.num_attention_heads ({self.num_attention_heads})")
        if self.head_dim % 2:
            raise InputError(f"model.hidden_size / model.num_attention_heads ({self.head_dim}) must be even "
                             "(rotary embeddings rotate pairs of features)")
        if len(self.layer_types) != self.num_hidden_layers:
            raise InputError(f"model.layer_types names {len(self.layer_types)} layers but model.num_hidden_layers "
                             f"is {self.num_hidden_layers}")
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise InputError(f"model.layer_types: {unknown[0]!r} is not one of {LAYER_TYPES}")
        for field in ("hidden_activation", "classifier_activation"):
            if getattr(self, field) not in ACTIVATIONS:
                raise InputError(f"model.{field} {getattr(self, field)!r} is not one of {ACTIVATIONS}")
        if self.classifier_pooling not in ("cls", "mean"):
            raise InputError(f"model.classifier_pooling {self.classifier_pooling!r} is not 'cls' or 'mean'")
        for field in self.DROPOUT_FIELDS:
            if not 0.0 <= getattr(self, field) < 1.0:
                raise InputError(f"model.{field} must be in [0, 1), got {getattr(self, field)}")
        for field in ("global_rope_theta", "local_rope_theta"):
            if getattr(self, field) <= 0:
                raise InputError(f"model.{field} must be positive, got {getattr(self, field)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def sliding_window(self) -> int:
        """How many tokens a sliding-attention token sees on either side."""
        return self.local_attention // 2

    def sliding_window_fields(self) -> tuple[str, ...]:
        """layer_types and local_attention when some layer is a sliding-window one."""
        return ("layer_types", "local_attention") if "sliding_attention" in self.layer_types else ()

    def rope_theta(self, layer_type: str) -> float:
        return self.global_rope_theta if layer_type == "full_attention" else self.local_rope_theta

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["layer_types"] = list(self.layer_types)
        return d

    @classmethod
    def hf_values(cls, hf: Mapping[str, Any], source: str) -> dict[str, Any]:
        """Field values of a config.json dict: `rope_parameters` (or the older
        `global_rope_theta` / `local_rope_theta` / `global_attn_every_n_layers`) become
        the rope thetas and layer types."""
        values = super().hf_values(hf, source)
        rope = hf.get("rope_parameters") or {}
        for layer_type, field in (("full_attention", "global_rope_theta"), ("sliding_attention", "local_rope_theta")):
            params = rope.get(layer_type) or {}
            rope_type = params.get("rope_type", "default")
            if rope_type != "default":
                raise InputError(f"{source}: rope_parameters.{layer_type}.rope_type {rope_type!r} is not supported "
                                 "(only 'default')")
            theta = params.get("rope_theta", hf.get(field))
            if theta is not None:
                values[field] = float(theta)
        if not hf.get("layer_types") and hf.get("global_attn_every_n_layers"):
            values["layer_types"] = default_layer_types(hf.get("num_hidden_layers", cls.num_hidden_layers),
                                                        int(hf["global_attn_every_n_layers"]))
        return values

    def hf_dict(self) -> dict[str, Any]:
        """config.json entries of the fields, the rope thetas as `rope_parameters`."""
        d = super().hf_dict()
        d["rope_parameters"] = {
            layer_type: {"rope_type": "default", "rope_theta": self.rope_theta(layer_type)}
            for layer_type in LAYER_TYPES
        }
        del d["global_rope_theta"], d["local_rope_theta"]
        return d
