"""ELECTRA (`model_type` "electra"): the family declaration and its classes; its pretraining
is replaced-token detection (`ElectraGeneratorDiscriminator`)."""

from flaxft.models.bert import FAMILY as BERT
from flaxft.models.electra.configuration import ElectraConfig
from flaxft.models.electra.encoder import ElectraModule
from flaxft.models.electra.flops import train_flops
from flaxft.models.electra.heads import (
    ElectraForMaskedLM,
    ElectraForPreTraining,
    ElectraForQuestionAnswering,
    ElectraForSequenceClassification,
    ElectraForTokenClassification,
    ElectraModel,
)
from flaxft.models.electra.pretraining import ElectraGeneratorDiscriminator
from flaxft.models.electra.weights import HF_FORMAT
from flaxft.models.family import Family

FAMILY = Family(
    name="electra",
    model_types=("electra",),
    config_class=ElectraConfig,
    heads={
        "encoder": ElectraModel,
        "pretraining": ElectraGeneratorDiscriminator,
        "replaced_token_detection": ElectraForPreTraining,
        "masked_lm": ElectraForMaskedLM,
        "sequence_classification": ElectraForSequenceClassification,
        "token_classification": ElectraForTokenClassification,
        "question_answering": ElectraForQuestionAnswering,
    },
    encoder_key="electra",
    layers_path=("electra", "encoder"),
    optional_encoder_params=(),
    below_layers=("electra/embeddings", "electra/embeddings_project"),
    above_layers=(),  # no pooler: its heads pool themselves
    tokenizer="wordpiece",
    logical_axes=BERT.logical_axes,
    hf=HF_FORMAT,
    train_flops=train_flops,
    pretraining_objective="replaced_token_detection",
)

__all__ = [
    "FAMILY",
    "ElectraConfig",
    "ElectraForMaskedLM",
    "ElectraForPreTraining",
    "ElectraForQuestionAnswering",
    "ElectraForSequenceClassification",
    "ElectraForTokenClassification",
    "ElectraGeneratorDiscriminator",
    "ElectraModel",
    "ElectraModule",
]
