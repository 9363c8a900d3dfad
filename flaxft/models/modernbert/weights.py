"""ModernBERT in Hugging Face folders: config.json entries and the state-dict name of
every parameter, read and written through one table."""

import dataclasses
import functools
from typing import Any

from flaxft.models.bert.weights import head_output_names, linear, problem_type_extras, same, transpose
from flaxft.models.bert.weights import norm as bert_norm
from flaxft.models.family import HFFormat, Weight
from flaxft.models.modernbert.configuration import ModernBertConfig

_TIED_DECODER = "decoder.weight"


def weight_table(config: ModernBertConfig, architecture: str) -> list[Weight]:
    """Every parameter of `architecture`, in a fixed order."""
    d, n, h, f = config.hidden_size, config.num_attention_heads, config.head_dim, config.intermediate_size
    qkv = (lambda k: k.reshape(d, 3 * n * h).T, lambda w: w.T.reshape(d, 3, n, h))
    qkv_bias = (lambda b: b.reshape(3 * n * h), lambda b: b.reshape(3, n, h))
    wo = (lambda k: k.reshape(n * h, d).T, lambda w: w.T.reshape(n, h, d))
    wi = (lambda k: k.reshape(d, 2 * f).T, lambda w: w.T.reshape(d, 2, f))
    wi_bias = (lambda b: b.reshape(2 * f), lambda b: b.reshape(2, f))

    def norm(path, hf):
        return bert_norm(path, hf, with_bias=config.norm_bias)

    table = [Weight(("embeddings", "tok_embeddings", "embedding"), "embeddings.tok_embeddings.weight", same, same)]
    table += norm(("embeddings", "norm"), "embeddings.norm")
    for i in range(config.num_hidden_layers):
        flax_layer, hf_layer = ("layers", f"layer_{i}"), f"layers.{i}"
        if i > 0:
            table += norm(flax_layer + ("attn_norm",), f"{hf_layer}.attn_norm")
        table += linear(flax_layer + ("attn", "Wqkv"), f"{hf_layer}.attn.Wqkv", qkv, qkv_bias, config.attention_bias)
        table += linear(flax_layer + ("attn", "Wo"), f"{hf_layer}.attn.Wo", wo, with_bias=config.attention_bias)
        table += norm(flax_layer + ("mlp_norm",), f"{hf_layer}.mlp_norm")
        table += linear(flax_layer + ("mlp", "Wi"), f"{hf_layer}.mlp.Wi", wi, wi_bias, config.mlp_bias)
        table += linear(flax_layer + ("mlp", "Wo"), f"{hf_layer}.mlp.Wo", with_bias=config.mlp_bias)
    table += norm(("final_norm",), "final_norm")
    table = [dataclasses.replace(w, path=("model",) + w.path) for w in table]
    if architecture == "ModernBertModel":
        return table
    table += linear(("prediction_head", "dense"), "head.dense", with_bias=config.classifier_bias)
    table += norm(("prediction_head", "norm"), "head.norm")
    if architecture == "ModernBertForMaskedLM":
        if not config.tie_word_embeddings:
            table.append(Weight(("decoder", "decoder", "kernel"), _TIED_DECODER, transpose, transpose))
        if config.decoder_bias:
            table.append(Weight(("decoder", "bias"), "decoder.bias", same, same))
    else:
        table += linear(("classifier",), "classifier")
    return table


def read_aliases(tensors: dict[str, Any], config: ModernBertConfig) -> dict[str, Any]:
    """Drops the tied decoder's copy of the token embeddings."""
    if config.tie_word_embeddings:
        tensors = {k: v for k, v in tensors.items() if k != _TIED_DECODER}
    return tensors


# No check_config: what ModernBERT cannot read (rotary types other than "default", unknown
# layer types, activations, pooling) is refused by ModernBertConfig.hf_values and its
# validation; `sparse_prediction` only changes which logits transformers returns in training.
HF_FORMAT = HFFormat(
    base_prefix="model.",
    weight_table=weight_table,
    config_extras=problem_type_extras,
    read_aliases=read_aliases,
    head_prefixes=("head.", "decoder.", "classifier."),
    output_names=functools.partial(head_output_names, encoder_outputs=("last_hidden_state",)),
)
