"""RoBERTa and XLM-RoBERTa in Hugging Face folders: config.json entries and the
state-dict name of every parameter, read and written through one table."""

import functools
from typing import Any

from flaxft.models.bert.weights import (
    BUFFERS,
    check_config,
    config_extras,
    encoder_weights,
    head_output_names,
    linear,
    norm,
    same,
    transpose,
)
from flaxft.models.family import HFFormat, Weight
from flaxft.models.roberta.configuration import RobertaConfig

_TIED_DECODER = "lm_head.decoder.weight"
_DECODER_BIAS = "lm_head.decoder.bias"


def _role(architecture: str) -> str:
    """The head an architecture name carries (RoBERTa's and XLM-RoBERTa's alike)."""
    for suffix, role in (("ForMaskedLM", "lm_head"), ("ForSequenceClassification", "sequence"),
                         ("ForTokenClassification", "token"), ("ForQuestionAnswering", "qa")):
        if architecture.endswith(suffix):
            return role
    return "encoder"


def weight_table(config: RobertaConfig, architecture: str) -> list[Weight]:
    """Every parameter of `architecture` in the unrolled layout, in a fixed order."""
    role = _role(architecture)
    table = encoder_weights(config, "roberta", with_pooler=role == "encoder")
    if role == "lm_head":
        table += linear(("lm_head", "dense"), "lm_head.dense") + norm(("lm_head", "layer_norm"), "lm_head.layer_norm")
        if config.tie_word_embeddings:
            table.append(Weight(("lm_head", "bias"), "lm_head.bias", same, same))
        else:  # the decoder's own bias is the one its forward adds (lm_head.bias goes unused)
            table.append(Weight(("lm_head", "decoder", "kernel"), _TIED_DECODER, transpose, transpose))
            table.append(Weight(("lm_head", "bias"), _DECODER_BIAS, same, same))
    elif role == "sequence":
        table += linear(("classifier", "dense"), "classifier.dense") + linear(("classifier", "out_proj"),
                                                                            "classifier.out_proj")
    elif role == "token":
        table += linear(("classifier",), "classifier")
    elif role == "qa":
        table += linear(("qa_outputs",), "qa_outputs")
    return table


def read_aliases(tensors: dict[str, Any], config: RobertaConfig) -> dict[str, Any]:
    """Drops buffers and the tied decoder copies (tied, the decoder's bias is lm_head.bias;
    untied, lm_head.bias is unused)."""
    tensors = {k: v for k, v in tensors.items() if k not in BUFFERS}
    if config.tie_word_embeddings:
        tensors.pop(_TIED_DECODER, None)
        if _DECODER_BIAS in tensors:
            tensors.setdefault("lm_head.bias", tensors.pop(_DECODER_BIAS))
    else:
        tensors.pop("lm_head.bias", None)
    return tensors


def write_extras(tensors: dict[str, Any], config: RobertaConfig) -> dict[str, Any]:
    """Untied: transformers also expects the (unused) lm_head.bias beside the decoder's."""
    if _DECODER_BIAS in tensors:
        return {**tensors, "lm_head.bias": tensors[_DECODER_BIAS].copy()}
    return tensors


HF_FORMAT = HFFormat(
    base_prefix="roberta.",
    weight_table=weight_table,
    check_config=check_config,  # BERT's: absolute position embeddings only
    config_extras=config_extras,
    read_aliases=read_aliases,
    head_prefixes=("lm_head.", "classifier.", "qa_outputs."),
    write_extras=write_extras,
    output_names=functools.partial(head_output_names, encoder_outputs=("last_hidden_state", "pooler_output")),
)
