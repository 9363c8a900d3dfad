"""ElectraConfig: Hugging Face field names, defaults of ELECTRA-Small's discriminator."""

import dataclasses
from typing import ClassVar

from flaxft.errors import InputError
from flaxft.models.bert.configuration import BertConfig


@dataclasses.dataclass(frozen=True)
class ElectraConfig(BertConfig):
    """BERT's fields and `embedding_size` E: embeddings are E wide and projected to
    hidden_size when the two differ (`transformers.ElectraConfig`'s defaults).

    generator_size (a training option, not in Hugging Face's config.json): in ELECTRA
    pretraining, the generator's width, MLP size and attention heads as a fraction of
    this (the discriminator's) config: ELECTRA-Small 1/4, ELECTRA-Base 1/3 (Clark et al.
    2020, table 6). Its depth and embeddings are the discriminator's.
    """

    TRAINING_OPTIONS: ClassVar[tuple[str, ...]] = (*BertConfig.TRAINING_OPTIONS, "generator_size")

    embedding_size: int = 128
    hidden_size: int = 256
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    generator_size: float = 0.25

    def __post_init__(self):
        super().__post_init__()
        if self.embedding_size < 1:
            raise InputError(f"model.embedding_size must be positive, got {self.embedding_size}")
        if not 0.0 < self.generator_size <= 1.0:
            raise InputError(f"model.generator_size must be in (0, 1], got {self.generator_size}")
        hidden, heads = self._generator_dims()[:2]
        if hidden % heads:
            raise InputError(
                f"model.generator_size {self.generator_size} gives the generator {hidden} hidden units, not "
                f"divisible by its {heads} attention heads"
            )

    def _generator_dims(self) -> tuple[int, int, int]:
        """(hidden_size, num_attention_heads, intermediate_size) of the generator."""
        scale = self.generator_size
        return (max(1, round(self.hidden_size * scale)), max(1, round(self.num_attention_heads * scale)),
                max(1, round(self.intermediate_size * scale)))

    def generator_config(self) -> "ElectraConfig":
        """The generator's config for ELECTRA pretraining: this one, `generator_size`
        times narrower; as an `ElectraForMaskedLM` of its own (generator_size 1)."""
        hidden, heads, intermediate = self._generator_dims()
        return self.replace(hidden_size=hidden, num_attention_heads=heads, intermediate_size=intermediate,
                            generator_size=1.0)
