"""ModernBERT (`model_type` "modernbert"): the family declaration and its classes."""

from flaxft.models.family import Family
from flaxft.models.modernbert.configuration import ModernBertConfig
from flaxft.models.modernbert.encoder import ModernBertModule
from flaxft.models.modernbert.flops import train_flops
from flaxft.models.modernbert.heads import (
    ModernBertForMaskedLM,
    ModernBertForQuestionAnswering,
    ModernBertForSequenceClassification,
    ModernBertForTokenClassification,
    ModernBertModel,
)
from flaxft.models.modernbert.weights import HF_FORMAT

FAMILY = Family(
    name="modernbert",
    model_types=("modernbert",),
    config_class=ModernBertConfig,
    heads={
        "encoder": ModernBertModel,
        "masked_lm": ModernBertForMaskedLM,
        "sequence_classification": ModernBertForSequenceClassification,
        "token_classification": ModernBertForTokenClassification,
        "question_answering": ModernBertForQuestionAnswering,
    },
    encoder_key="model",
    layers_path=("model", "layers"),
    optional_encoder_params=(),
    below_layers=("model/embeddings",),
    above_layers=("model/final_norm", "prediction_head"),  # the head's dense + norm before the classifier
    tokenizer="byte_level_bpe",
    logical_axes=("vocab", "embed", "fused", "heads", "kv", "mlp", "hidden", "classes", "layers", "lora"),
    hf=HF_FORMAT,
    train_flops=train_flops,
    first_scanned_layer=1,  # layer 0 has no attention norm
)

__all__ = [
    "FAMILY",
    "ModernBertConfig",
    "ModernBertForMaskedLM",
    "ModernBertForQuestionAnswering",
    "ModernBertForSequenceClassification",
    "ModernBertForTokenClassification",
    "ModernBertModel",
    "ModernBertModule",
]
