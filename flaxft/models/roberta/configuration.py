"""RobertaConfig and XLMRobertaConfig: Hugging Face field names, defaults of the published
base models (roberta-base, xlm-roberta-base)."""

import dataclasses

from flaxft.errors import InputError
from flaxft.models.bert.configuration import BertConfig


@dataclasses.dataclass(frozen=True)
class RobertaConfig(BertConfig):
    """BERT's fields (`transformers.RobertaConfig` is a BertConfig) with RoBERTa's values,
    and its special token ids. Positions start at pad_token_id + 1 (fairseq's convention),
    so a row holds at most max_position_embeddings - pad_token_id - 1 tokens."""

    vocab_size: int = 50265
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2

    def __post_init__(self):
        super().__post_init__()
        if self.max_seq_len < 1:
            raise InputError(f"model.max_position_embeddings ({self.max_position_embeddings}) leaves no position "
                             f"after the padding index ({self.pad_token_id})")

    @property
    def max_seq_len(self) -> int:
        return self.max_position_embeddings - self.pad_token_id - 1


@dataclasses.dataclass(frozen=True)
class XLMRobertaConfig(RobertaConfig):
    """XLM-RoBERTa: RoBERTa's network with a 250k SentencePiece vocabulary."""

    vocab_size: int = 250002
