"""BertConfig: Hugging Face `BertConfig` field names plus flaxft's training options."""

import dataclasses
from typing import ClassVar

from flaxft.errors import InputError
from flaxft.models.family import ModelConfig
from flaxft.models.layers import ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class BertConfig(ModelConfig):
    """BERT's hyperparameters; field names follow `transformers.BertConfig` (defaults:
    BERT-Base). Training options and head size: see `ModelConfig`."""

    DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = (
        "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"
    )
    ATTENTION_DROPOUT_FIELD: ClassVar[str] = "attention_probs_dropout_prob"

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
    classifier_dropout: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.hidden_size % self.num_attention_heads:
            raise InputError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise InputError(f"model.hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}")
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(self, field) < 1:
                raise InputError(f"model.{field} must be positive, got {getattr(self, field)}")
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            rate = getattr(self, field)
            if rate is not None and not 0.0 <= rate < 1.0:
                raise InputError(f"model.{field} must be in [0, 1), got {rate}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads
