"""BERT (`model_type` "bert"): the family declaration and its classes."""

from flaxft.models.bert.configuration import BertConfig
from flaxft.models.bert.encoder import BertModule
from flaxft.models.bert.flops import train_flops
from flaxft.models.bert.heads import (
    BertForMaskedLM,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from flaxft.models.bert.weights import HF_FORMAT
from flaxft.models.family import Family

FAMILY = Family(
    name="bert",
    model_types=("bert",),
    config_class=BertConfig,
    heads={
        "encoder": BertModel,
        "pretraining": BertForPreTraining,
        "masked_lm": BertForMaskedLM,
        "sequence_classification": BertForSequenceClassification,
        "token_classification": BertForTokenClassification,
        "question_answering": BertForQuestionAnswering,
    },
    encoder_key="bert",
    layers_path=("bert", "encoder"),
    optional_encoder_params=("pooler",),
    below_layers=("bert/embeddings",),
    above_layers=("bert/pooler",),
    tokenizer="wordpiece",
    logical_axes=("vocab", "embed", "position", "token_type", "heads", "kv", "mlp", "hidden", "classes", "layers",
                  "lora"),
    hf=HF_FORMAT,
    train_flops=train_flops,
)

__all__ = [
    "FAMILY",
    "BertConfig",
    "BertForMaskedLM",
    "BertForPreTraining",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "BertModule",
]
