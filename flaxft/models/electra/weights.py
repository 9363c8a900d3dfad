"""ELECTRA in Hugging Face folders: config.json entries and the state-dict name of every
parameter, read and written through one table."""

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
from flaxft.models.electra.configuration import ElectraConfig
from flaxft.models.family import HFFormat, Weight

_TIED_DECODER = "generator_lm_head.weight"
ROLES = {
    "ElectraModel": "encoder",
    "ElectraForPreTraining": "discriminator",
    "ElectraForMaskedLM": "generator",
    "ElectraForSequenceClassification": "sequence",
    "ElectraForTokenClassification": "token",
    "ElectraForQuestionAnswering": "qa",
}


def weight_table(config: ElectraConfig, architecture: str) -> list[Weight]:
    """Every parameter of `architecture` in the unrolled layout, in a fixed order."""
    table = encoder_weights(config, "electra", with_pooler=False)
    if config.embedding_size != config.hidden_size:
        table += linear(("electra", "embeddings_project"), "embeddings_project")
    role = ROLES[architecture]
    if role == "discriminator":
        table += linear(("discriminator_predictions", "dense"), "discriminator_predictions.dense")
        table += linear(("discriminator_predictions", "dense_prediction"), "discriminator_predictions.dense_prediction")
    elif role == "generator":
        table += linear(("generator_predictions", "dense"), "generator_predictions.dense")
        table += norm(("generator_predictions", "LayerNorm"), "generator_predictions.LayerNorm")
        if not config.tie_word_embeddings:
            table.append(Weight(("generator_lm_head", "decoder", "kernel"), _TIED_DECODER, transpose, transpose))
        table.append(Weight(("generator_lm_head", "bias"), "generator_lm_head.bias", same, same))
    elif role == "sequence":
        table += linear(("classifier", "dense"), "classifier.dense") + linear(("classifier", "out_proj"),
                                                                            "classifier.out_proj")
    elif role == "token":
        table += linear(("classifier",), "classifier")
    elif role == "qa":
        table += linear(("qa_outputs",), "qa_outputs")
    return table


def read_aliases(tensors: dict[str, Any], config: ElectraConfig) -> dict[str, Any]:
    """Drops buffers, and the generator's decoder when it is the tied word embeddings."""
    tensors = {k: v for k, v in tensors.items() if k not in BUFFERS}
    if config.tie_word_embeddings:
        tensors.pop(_TIED_DECODER, None)
    return tensors


HF_FORMAT = HFFormat(
    base_prefix="electra.",
    weight_table=weight_table,
    check_config=check_config,  # BERT's: absolute position embeddings only
    config_extras=config_extras,
    read_aliases=read_aliases,
    head_prefixes=("discriminator_predictions.", "generator_predictions.", "generator_lm_head.", "classifier.",
                   "qa_outputs."),
    output_names=functools.partial(head_output_names, encoder_outputs=("last_hidden_state",)),
)
