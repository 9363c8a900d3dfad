"""Pure functional Flax BERT: parameters are a pytree passed to `apply`."""

from flaxft.models.bert import LOGICAL_AXES, BertModule, BertOutput
from flaxft.models.config import BertConfig
from flaxft.models.heads import (
    ARCHITECTURES,
    BertForMaskedLM,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    init_params,
)

__all__ = [
    "ARCHITECTURES",
    "LOGICAL_AXES",
    "BertConfig",
    "BertForMaskedLM",
    "BertForPreTraining",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "BertModule",
    "BertOutput",
    "init_params",
]
