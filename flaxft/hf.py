"""Hugging Face transformers <-> flaxft: configs, weights, whole model folders.

One table (`weight_table`) lists every parameter as (flaxft path, Hugging Face name,
transform); reading and writing both walk it, so the two directions cannot drift apart.

    model, params = from_pretrained("path/to/hf_folder")
    out = model.apply({"params": params}, input_ids, attention_mask=mask)
    save_pretrained(model, params, "path/to/new_folder", tokenizer_dir="path/to/hf_folder")
"""

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from flaxft.errors import InputError
from flaxft.files import new_output_dir
from flaxft.models import ARCHITECTURES, BertConfig, init_params
from flaxft.models.layout import adapt_params, with_layer_layout

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)
TRAINING_OPTIONS = ("dtype", "param_dtype", "scan_layers", "remat_policy")
HEADS_OF = {
    "BertModel": (),
    "BertForPreTraining": ("mlm", "nsp"),
    "BertForMaskedLM": ("mlm",),
    "BertForSequenceClassification": ("classifier",),
    "BertForTokenClassification": ("classifier",),
    "BertForQuestionAnswering": ("qa_outputs",),
}
HAS_POOLER = {"BertModel", "BertForPreTraining", "BertForSequenceClassification"}
# Buffers and tied copies that Hugging Face checkpoints may hold but that are not parameters.
_NOT_PARAMETERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_TIED_DECODER = "cls.predictions.decoder.weight"
_DECODER_BIAS = "cls.predictions.decoder.bias"
_HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.", "pooler.")


@dataclasses.dataclass(frozen=True)
class Weight:
    """One parameter: its flaxft path, its Hugging Face name (without the `bert.` prefix)
    and the functions converting the flaxft array to the Hugging Face tensor and back."""

    path: tuple[str, ...]
    hf_name: str
    to_hf: Callable[[Any], Any]
    from_hf: Callable[[Any], Any]


def weight_table(config: BertConfig, architecture: str) -> list[Weight]:
    """Every parameter of `architecture` in the unrolled layout, in a fixed order."""
    d, n, h = config.hidden_size, config.num_attention_heads, config.head_dim

    def same(x):
        return x

    def transpose(x):
        return x.T

    def linear(path, hf, kernel=(transpose, transpose), bias=(same, same)):
        """A torch Linear: weight [out, in] is the transposed flax kernel [in, out]."""
        return [Weight(path + ("kernel",), hf + ".weight", *kernel), Weight(path + ("bias",), hf + ".bias", *bias)]

    def norm(path, hf):
        return [Weight(path + ("scale",), hf + ".weight", same, same), Weight(path + ("bias",), hf + ".bias", same, same)]

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
    if architecture in HAS_POOLER:
        table += linear(("pooler",), "pooler.dense")
    table = [dataclasses.replace(w, path=("bert",) + w.path) for w in table]

    heads = {
        "mlm": linear(("mlm", "transform"), "cls.predictions.transform.dense")
        + norm(("mlm", "LayerNorm"), "cls.predictions.transform.LayerNorm")
        + _mlm_decoder(config, transpose),
        "nsp": linear(("nsp",), "cls.seq_relationship"),
        "classifier": linear(("classifier",), "classifier"),
        "qa_outputs": linear(("qa_outputs",), "qa_outputs"),
    }
    for head in HEADS_OF[architecture]:
        table += heads[head]
    return table


def _mlm_decoder(config: BertConfig, transpose: Callable) -> list[Weight]:
    """The MLM output bias, and the decoder kernel when it is not tied to the embeddings.

    Hugging Face adds `cls.predictions.decoder.bias`, tied to `cls.predictions.bias`;
    when the embeddings are untied the decoder's own bias is the one its forward uses.
    """
    if config.tie_word_embeddings:
        return [Weight(("mlm", "bias"), "cls.predictions.bias", lambda b: b, lambda b: b)]
    return [
        Weight(("mlm", "decoder", "kernel"), _TIED_DECODER, transpose, transpose),
        Weight(("mlm", "bias"), _DECODER_BIAS, lambda b: b, lambda b: b),
    ]


def hf_key(architecture: str, name: str) -> str:
    """The state-dict key Hugging Face uses: encoder weights get `bert.` under a head."""
    if architecture != "BertModel" and not name.startswith(("cls.", "classifier.", "qa_outputs.")):
        return "bert." + name
    return name


def _canonical_name(key: str) -> str:
    """Undoes old spellings: drops the `bert.` prefix, LayerNorm gamma/beta -> weight/bias."""
    key = key.removeprefix("bert.")
    if key.endswith(".gamma"):
        key = key[: -len(".gamma")] + ".weight"
    elif key.endswith(".beta"):
        key = key[: -len(".beta")] + ".bias"
    return key


# ----------------------------------------------------------------------------- configs


def config_from_hf(hf: dict[str, Any], source: str, **overrides: Any) -> BertConfig:
    """BertConfig from a Hugging Face config.json dict; `source` names the file in errors."""
    model_type = hf.get("model_type")
    if model_type != "bert":
        raise InputError(f"{source}: model_type {model_type!r} is not BERT (flaxft reads model_type 'bert')")
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise InputError(f"{source}: position_embedding_type {position_type!r} is not supported (only 'absolute')")
    fields = {f.name for f in dataclasses.fields(BertConfig)} - set(TRAINING_OPTIONS) - {"id2label"}
    kwargs = {k: hf[k] for k in fields if k in hf and hf[k] is not None}
    kwargs["classifier_dropout"] = hf.get("classifier_dropout")
    if hf.get("id2label"):
        labels = {int(i): name for i, name in hf["id2label"].items()}
        kwargs["id2label"] = tuple(labels[i] for i in range(len(labels)))
        kwargs["num_labels"] = len(labels)
    kwargs.update(overrides)
    try:
        return BertConfig(**kwargs)
    except TypeError as e:
        raise InputError(f"{source}: {e}") from None


def config_to_hf(config: BertConfig, architecture: str) -> dict[str, Any]:
    """A Hugging Face config.json dict for `architecture` (training options left out)."""
    hf = {"architectures": [architecture], "model_type": "bert", "position_embedding_type": "absolute"}
    for key, value in config.to_dict().items():
        if key not in TRAINING_OPTIONS and key != "id2label":
            hf[key] = value
    names = config.id2label or tuple(f"LABEL_{i}" for i in range(config.num_labels))
    hf["id2label"] = {str(i): name for i, name in enumerate(names)}
    hf["label2id"] = {name: i for i, name in enumerate(names)}
    if config.num_labels == 1 and architecture == "BertForSequenceClassification":
        hf["problem_type"] = "regression"
    return hf


# ----------------------------------------------------------------------------- reading


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed config.json of a Hugging Face model folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such model folder")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise InputError(f"{config_file}: missing (a Hugging Face model folder needs config.json)")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{config_file}: not valid JSON ({e})") from None


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of a model folder as numpy arrays, and the file(s) they came from.

    Reads model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin
    (the last needs torch).
    """
    folder = Path(path)
    from safetensors.numpy import load_file

    if (folder / "model.safetensors").is_file():
        file = folder / "model.safetensors"
        return _load(load_file, file), str(file)
    if (folder / "model.safetensors.index.json").is_file():
        index = folder / "model.safetensors.index.json"
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(_load(load_file, folder / shard))
        return state, str(index)
    if (folder / "pytorch_model.bin").is_file():
        file = folder / "pytorch_model.bin"
        try:
            import torch
        except ImportError:
            raise InputError(f"{file}: reading pytorch_model.bin needs torch (pip install torch)") from None

        def load_torch(f):
            tensors = torch.load(f, map_location="cpu", weights_only=True)
            return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in tensors.items()}

        return _load(load_torch, file), str(file)
    raise InputError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _load(loader: Callable[[Path], dict], file: Path) -> dict[str, np.ndarray]:
    try:
        return loader(file)
    except InputError:
        raise
    except Exception as e:  # a truncated or foreign file: say which one
        raise InputError(f"{file}: cannot read weights ({type(e).__name__}: {e})") from None


def params_from_state_dict(
    state: dict[str, np.ndarray],
    config: BertConfig,
    architecture: str,
    source: str,
) -> dict:
    """flaxft params (unrolled layout, param_dtype) from a Hugging Face state dict.
    A missing or misshapen weight is an InputError naming it and `source`."""
    by_name: dict[str, np.ndarray] = {}
    for key, value in state.items():
        by_name.setdefault(_canonical_name(key), value)
    if config.tie_word_embeddings and _DECODER_BIAS in by_name:  # a tied copy of cls.predictions.bias
        by_name.setdefault("cls.predictions.bias", by_name.pop(_DECODER_BIAS))

    table = weight_table(config, architecture)
    expected = _expected_shapes(config, architecture)
    flat: dict[tuple[str, ...], jax.Array] = {}
    for w in table:
        tensor = by_name.pop(w.hf_name, None)
        if tensor is None:
            raise InputError(f"{source}: missing weight {hf_key(architecture, w.hf_name)!r}")
        want = jax.eval_shape(w.to_hf, jax.ShapeDtypeStruct(expected[w.path], jnp.float32)).shape
        if tuple(tensor.shape) != tuple(want):
            raise InputError(
                f"{source}: weight {hf_key(architecture, w.hf_name)!r} has shape {tuple(tensor.shape)} "
                f"but the config implies {tuple(want)}"
            )
        flat[w.path] = jnp.asarray(w.from_hf(np.asarray(tensor)), dtype=config.weights_dtype)

    for name in list(by_name):
        if name in _NOT_PARAMETERS or (name == _TIED_DECODER and config.tie_word_embeddings):
            del by_name[name]
        elif name.startswith(_HEAD_PREFIXES):  # another head's weights: not used by this one
            log.info("%s: %s unused by %s", source, name, architecture)
            del by_name[name]
    if by_name:
        raise InputError(f"{source}: unexpected weight {sorted(by_name)[0]!r} (not part of a BERT)")
    return traverse_util.unflatten_dict(flat)


def _expected_shapes(config: BertConfig, architecture: str) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Shapes of every parameter in the unrolled layout, without allocating them."""
    model = ARCHITECTURES[architecture](config.replace(scan_layers=False))
    abstract = jax.eval_shape(lambda: nn.meta.unbox(init_params(model, jax.random.key(0))))
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(abstract).items()}


def from_pretrained(
    path: str | os.PathLike, architecture: str | None = None, seed: int = 0, **overrides: Any
) -> tuple[nn.Module, dict]:
    """Reads a Hugging Face BERT folder: returns (model, params).

    The head comes from config.json's `architectures` unless `architecture` names another
    one; then weights of the new head that the folder lacks are initialised afresh from
    `seed`. `overrides` set BertConfig fields (e.g. dtype="bfloat16", scan_layers=True,
    num_labels=3); params come in the layout `scan_layers` asks for.
    """
    hf = read_hf_config(path)
    config = config_from_hf(hf, str(Path(path) / "config.json"), **overrides)
    saved_architecture = (hf.get("architectures") or ["BertModel"])[0]
    architecture = architecture or saved_architecture
    if architecture not in ARCHITECTURES:
        raise InputError(f"{Path(path) / 'config.json'}: architecture {architecture!r} is not one of {sorted(ARCHITECTURES)}")
    if saved_architecture not in ARCHITECTURES:
        saved_architecture = "BertModel"  # a BERT with a head flaxft does not have: read its encoder
    state, source = read_state_dict(path)
    params = params_from_state_dict(state, config, saved_architecture, source)
    model = ARCHITECTURES[architecture](config)
    if architecture != saved_architecture:
        return model, adapt_params(params, model, seed)
    return model, with_layer_layout(params, config.scan_layers)


# ----------------------------------------------------------------------------- writing


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copies the Hugging Face tokenizer files found in `src` into `dst`; returns their names."""
    names = [name for name in TOKENIZER_FILES if (Path(src) / name).is_file()]
    if names:
        Path(dst).mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(Path(src) / name, Path(dst) / name)
    return names


def state_dict_from_params(params: dict, config: BertConfig, architecture: str) -> dict[str, np.ndarray]:
    """Hugging Face state dict (float32 numpy, tied decoder left out) from flaxft params in
    either layout."""
    params = with_layer_layout(jax.device_get(nn.meta.unbox(params)), scan_layers=False)
    flat = traverse_util.flatten_dict(params)
    state = {
        hf_key(architecture, w.hf_name): np.ascontiguousarray(w.to_hf(np.asarray(flat[w.path], np.float32)))
        for w in weight_table(config, architecture)
    }
    if _DECODER_BIAS in state:  # untied: transformers also expects the (unused) head bias
        state["cls.predictions.bias"] = state[_DECODER_BIAS].copy()
    return state


def save_pretrained(
    model: nn.Module, params: dict, out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None
) -> None:
    """Writes a Hugging Face folder (config.json with `architectures`, model.safetensors,
    and the tokenizer files found in `tokenizer_dir`) that `transformers.AutoModel*`
    loads with no missing or unexpected weights.

    The folder appears whole or not at all; an existing non-empty `out_dir` is an
    InputError (nothing is overwritten).
    """
    from safetensors.numpy import save_file

    architecture = type(model).__name__
    state = state_dict_from_params(params, model.config, architecture)
    with new_output_dir(out_dir) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = config_to_hf(model.config, architecture)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if tokenizer_dir is not None:
            copy_tokenizer_files(tokenizer_dir, tmp)
