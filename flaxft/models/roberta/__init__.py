"""RoBERTa (`model_type` "roberta") and XLM-RoBERTa ("xlm-roberta"): one network, two
families (their checkpoints and tokenizers differ: byte-level BPE vs SentencePiece)."""

import dataclasses

from flaxft.models.bert import FAMILY as BERT
from flaxft.models.family import Family
from flaxft.models.roberta.configuration import RobertaConfig, XLMRobertaConfig
from flaxft.models.roberta.encoder import RobertaModule
from flaxft.models.roberta.heads import (
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
    XLMRobertaForMaskedLM,
    XLMRobertaForQuestionAnswering,
    XLMRobertaForSequenceClassification,
    XLMRobertaForTokenClassification,
    XLMRobertaModel,
)
from flaxft.models.roberta.weights import HF_FORMAT

FAMILY = Family(
    name="roberta",
    model_types=("roberta",),
    config_class=RobertaConfig,
    heads={
        "encoder": RobertaModel,
        "masked_lm": RobertaForMaskedLM,
        "sequence_classification": RobertaForSequenceClassification,
        "token_classification": RobertaForTokenClassification,
        "question_answering": RobertaForQuestionAnswering,
    },
    encoder_key="roberta",
    layers_path=("roberta", "encoder"),
    optional_encoder_params=("pooler",),
    below_layers=("roberta/embeddings",),
    above_layers=("roberta/pooler",),
    tokenizer="byte_level_bpe",
    logical_axes=BERT.logical_axes,
    hf=HF_FORMAT,
    train_flops=BERT.train_flops,  # BERT's encoder and MLM head sizes
)

XLM_ROBERTA_FAMILY = dataclasses.replace(  # RoBERTa's network, parameter tree and weight names
    FAMILY,
    name="xlm_roberta",
    model_types=("xlm-roberta",),
    config_class=XLMRobertaConfig,
    heads={
        "encoder": XLMRobertaModel,
        "masked_lm": XLMRobertaForMaskedLM,
        "sequence_classification": XLMRobertaForSequenceClassification,
        "token_classification": XLMRobertaForTokenClassification,
        "question_answering": XLMRobertaForQuestionAnswering,
    },
    tokenizer="sentencepiece",
)

__all__ = [
    "FAMILY",
    "XLM_ROBERTA_FAMILY",
    "RobertaConfig",
    "RobertaForMaskedLM",
    "RobertaForQuestionAnswering",
    "RobertaForSequenceClassification",
    "RobertaForTokenClassification",
    "RobertaModel",
    "RobertaModule",
    "XLMRobertaConfig",
    "XLMRobertaForMaskedLM",
    "XLMRobertaForQuestionAnswering",
    "XLMRobertaForSequenceClassification",
    "XLMRobertaForTokenClassification",
    "XLMRobertaModel",
]
