"""Pure functional Flax encoders: parameters are a pytree passed to `apply`.

Each family is a package (`flaxft.models.bert`) declaring a `Family`; the registry
(`flaxft.models.registry`) lists them. Every model returns an `EncoderOutput`.
"""

from flaxft.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from flaxft.models.family import HEAD_ROLES, EncoderOutput, Family, ModelConfig
from flaxft.models.layers import LOGICAL_AXES
from flaxft.models.params import abstract_params, fit_params, init_params, new_params, restack
from flaxft.models.registry import ARCHITECTURES, FAMILIES, family_for_model_type, family_named, family_of

__all__ = [
    "ARCHITECTURES",
    "FAMILIES",
    "HEAD_ROLES",
    "LOGICAL_AXES",
    "BertConfig",
    "BertForMaskedLM",
    "BertForPreTraining",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "EncoderOutput",
    "Family",
    "ModelConfig",
    "abstract_params",
    "family_for_model_type",
    "family_named",
    "family_of",
    "fit_params",
    "init_params",
    "new_params",
    "restack",
]
