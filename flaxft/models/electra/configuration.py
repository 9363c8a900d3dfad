"""ElectraConfig: Hugging Face field names, defaults of ELECTRA-Small's discriminator."""

import dataclasses

from flaxft.errors import InputError
from flaxft.models.bert.configuration import BertConfig


@dataclasses.dataclass(frozen=True)
class ElectraConfig(BertConfig):
    """BERT's fields and `embedding_size` E: embeddings are E wide and projected to
    hidden_size when the two differ (`transformers.ElectraConfig`'s defaults)."""

    embedding_size: int = 128
    hidden_size: int = 256
    num_attention_heads: int = 4
    intermediate_size: int = 1024

    def __post_init__(self):
        super().__post_init__()
        if self.embedding_size < 1:
            raise InputError(f"model.embedding_size must be positive, got {self.embedding_size}")
