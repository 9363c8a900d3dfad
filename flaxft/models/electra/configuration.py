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

    def generator_config(self) -> "ElectraConfig":
        """The generator's config for ELECTRA pretraining: this one, `generator_size`
        times narrower; as an `ElectraForMaskedLM` of its own (generator_size 1).

        Raises:
            InputError: generator_size does not scale the width, heads and MLP size to
                whole numbers.
        """
        scaled = [n * self.generator_size for n in (self.hidden_size, self.num_attention_heads, self.intermediate_size)]
        if any(abs(x - round(x)) > 1e-6 or round(x) < 1 for x in scaled):
            raise InputError(
                f"model.generator_size {self.generator_size} must scale hidden_size, num_attention_heads and "
                f"intermediate_size ({self.hidden_size}, {self.num_attention_heads}, {self.intermediate_size}) "
                f"to whole numbers; it gives {', '.join(f'{x:g}' for x in scaled)}"
            )
        hidden, heads, intermediate = (round(x) for x in scaled)  # the discriminator's head size
        return self.replace(hidden_size=hidden, num_attention_heads=heads, intermediate_size=intermediate,
                            generator_size=1.0)
