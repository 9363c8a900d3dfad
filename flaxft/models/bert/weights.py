"""BERT in Hugging Face folders: config.json entries and the state-dict name of every
parameter (`HF_FORMAT`), read and written through one table."""

import dataclasses
from collections.abc import Mapping
from typing import Any

from flaxft.errors import InputError
from flaxft.models.bert.configuration import BertConfig
from flaxft.models.family import HFFormat, ModelConfig, Weight

HEADS_OF = {
    "BertModel": (),
    "BertForPreTraining": ("mlm", "nsp"),
    "BertForMaskedLM": ("mlm",),
    "BertForSequenceClassification": ("classifier",),
    "BertForTokenClassification": ("classifier",),
    "BertForQuestionAnswering": ("qa_outputs",),
}
HAS_POOLER = {"BertModel", "BertForPreTraining", "BertForSequenceClassification"}
# Buffers that checkpoints may hold but that are not parameters.
BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_TIED_DECODER = "cls.predictions.decoder.weight"
_DECODER_BIAS = "cls.predictions.decoder.bias"


def same(x):
    return x


def transpose(x):
    return x.T


def linear(path: tuple[str, ...], hf: str, kernel=(transpose, transpose), bias=(same, same),
           with_bias: bool = True) -> list[Weight]:
    """A torch Linear: weight [out, in] is the transposed flax kernel [in, out]; its bias
    unless not `with_bias`."""
    table = [Weight(path + ("kernel",), hf + ".weight", *kernel)]
    return table + ([Weight(path + ("bias",), hf + ".bias", *bias)] if with_bias else [])


def norm(path: tuple[str, ...], hf: str, with_bias: bool = True) -> list[Weight]:
    """A torch LayerNorm: weight and bias (unless not `with_bias`) are the flax scale and bias."""
    table = [Weight(path + ("scale",), hf + ".weight", same, same)]
    return table + ([Weight(path + ("bias",), hf + ".bias", same, same)] if with_bias else [])


def encoder_weights(config: BertConfig, key: str, with_pooler: bool) -> list[Weight]:
    """The embeddings, every layer and (`with_pooler`) the pooler of a BERT-style encoder
    kept under params[key], named as transformers names them (without the base prefix);
    RoBERTa's and ELECTRA's encoders are these too."""
    d, n, h = config.hidden_size, config.num_attention_heads, config.head_dim
    split_heads = (lambda k: k.reshape(d, n * h).T, lambda w: w.T.reshape(d, n, h))
    split_bias = (lambda b: b.reshape(n * h), lambda b: b.reshape(n, h))
    merge_heads = (lambda k: k.reshape(n * h, d).T, lambda w: w.T.reshape(n, h, d))

    table = [
        Weight(("embeddings", f"{name}_embeddings", "embedding"), f"embeddings.{name}_embeddings.weight", same, same)
        for name in ("word", "position", "token_type")
    ]
    table += norm(("embeddings", "LayerNorm"), "embeddings.LayerNorm")
    for i in range(config.num_hidden_layers):
        flax_layer, hf_layer = ("encoder", f"layer_{i}"), f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            table += linear(flax_layer + ("attention", name), f"{hf_layer}.attention.self.{name}", split_heads, split_bias)
        table += linear(flax_layer + ("attention", "output"), f"{hf_layer}.attention.output.dense", merge_heads)
        table += norm(flax_layer + ("attention", "LayerNorm"), f"{hf_layer}.attention.output.LayerNorm")
        table += linear(flax_layer + ("mlp", "intermediate"), f"{hf_layer}.intermediate.dense")
        table += linear(flax_layer + ("mlp", "output"), f"{hf_layer}.output.dense")
        table += norm(flax_layer + ("mlp", "LayerNorm"), f"{hf_layer}.output.LayerNorm")
    if with_pooler:
        table += linear(("pooler",), "pooler.dense")
    return [dataclasses.replace(w, path=(key,) + w.path) for w in table]


def weight_table(config: BertConfig, architecture: str) -> list[Weight]:
    """Every parameter of `architecture` in the unrolled layout, in a fixed order."""
    table = encoder_weights(config, "bert", architecture in HAS_POOLER)
    heads = {
        "mlm": linear(("mlm", "transform"), "cls.predictions.transform.dense")
        + norm(("mlm", "LayerNorm"), "cls.predictions.transform.LayerNorm")
        + _mlm_decoder(config),
        "nsp": linear(("nsp",), "cls.seq_relationship"),
        "classifier": linear(("classifier",), "classifier"),
        "qa_outputs": linear(("qa_outputs",), "qa_outputs"),
    }
    for head in HEADS_OF[architecture]:
        table += heads[head]
    return table


def _mlm_decoder(config: BertConfig) -> list[Weight]:
    """The MLM output bias, and the decoder kernel when it is not tied to the embeddings.

    Hugging Face adds `cls.predictions.decoder.bias`, tied to `cls.predictions.bias`;
    when the embeddings are untied the decoder's own bias is the one its forward uses.
    """
    if config.tie_word_embeddings:
        return [Weight(("mlm", "bias"), "cls.predictions.bias", same, same)]
    return [
        Weight(("mlm", "decoder", "kernel"), _TIED_DECODER, transpose, transpose),
        Weight(("mlm", "bias"), _DECODER_BIAS, same, same),
    ]


def check_config(hf: Mapping[str, Any], source: str) -> None:
    """BERT folders flaxft reads: absolute position embeddings only."""
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise InputError(f"{source}: position_embedding_type {position_type!r} is not supported (only 'absolute')")


def config_extras(config: BertConfig, architecture: str) -> dict[str, Any]:
    """config.json entries beyond the fields (BERT's and the families built on its
    encoder): absolute positions, and regression for a one-label sequence classifier."""
    return {"position_embedding_type": "absolute", **problem_type_extras(config, architecture)}


def problem_type_extras(config: ModelConfig, architecture: str) -> dict[str, Any]:
    """`problem_type` "regression" for a one-label sequence classifier (any family)."""
    if config.num_labels == 1 and architecture.endswith("ForSequenceClassification"):
        return {"problem_type": "regression"}
    return {}


def read_aliases(tensors: dict[str, Any], config: BertConfig) -> dict[str, Any]:
    """Drops buffers and the tied decoder copy; a tied model's decoder bias is the MLM bias."""
    tensors = {k: v for k, v in tensors.items() if k not in BUFFERS}
    if config.tie_word_embeddings:
        tensors.pop(_TIED_DECODER, None)
        if _DECODER_BIAS in tensors:  # a tied copy of cls.predictions.bias
            tensors.setdefault("cls.predictions.bias", tensors.pop(_DECODER_BIAS))
    return tensors


def write_extras(tensors: dict[str, Any], config: BertConfig) -> dict[str, Any]:
    """Untied: transformers also expects the (unused) head bias beside the decoder's."""
    if _DECODER_BIAS in tensors:
        return {**tensors, "cls.predictions.bias": tensors[_DECODER_BIAS].copy()}
    return tensors


def head_output_names(architecture: str, encoder_outputs: tuple[str, ...]) -> dict[str, str]:
    """EncoderOutput fields -> transformers' output fields of a one-head architecture of a
    family on BERT's encoder, by its name: a bare `...Model` gives `encoder_outputs`,
    `...ForMaskedLM` its logits as mlm_logits, `...ForQuestionAnswering` start/end
    logits, any other head `logits`."""
    if architecture.endswith("Model"):
        return {name: name for name in encoder_outputs}
    if architecture.endswith("ForMaskedLM"):
        return {"mlm_logits": "logits"}
    if architecture.endswith("ForQuestionAnswering"):
        return {"start_logits": "start_logits", "end_logits": "end_logits"}
    return {"logits": "logits"}


def output_names(architecture: str) -> dict[str, str]:
    """EncoderOutput fields -> the fields of transformers' output for a BERT architecture
    (a bare BertModel returns the hidden states, a head only its logits)."""
    heads = HEADS_OF[architecture]
    if not heads:
        return {"last_hidden_state": "last_hidden_state", "pooler_output": "pooler_output"}
    if architecture == "BertForPreTraining":
        return {"mlm_logits": "prediction_logits", "nsp_logits": "seq_relationship_logits"}
    if "mlm" in heads:
        return {"mlm_logits": "logits"}
    if "qa_outputs" in heads:
        return {"start_logits": "start_logits", "end_logits": "end_logits"}
    return {"logits": "logits"}


HF_FORMAT = HFFormat(
    base_prefix="bert.",
    weight_table=weight_table,
    check_config=check_config,
    config_extras=config_extras,
    read_aliases=read_aliases,
    head_prefixes=("cls.", "classifier.", "qa_outputs."),
    write_extras=write_extras,
    output_names=output_names,
)
