"""Hugging Face transformers <-> flaxft: configs, weights, whole model folders, for every
model family.

Each family's weight table (`Family.hf`) lists every parameter as (flaxft path, Hugging
Face name, transform); reading and writing both walk it, so the two directions cannot
drift apart. The family of a folder is its config.json `model_type`.

    model, params = from_pretrained("path/to/hf_folder")
    out = model.apply({"params": params}, input_ids, attention_mask=mask)
    save_pretrained(model, params, "path/to/new_folder", tokenizer_dir="path/to/hf_folder")
"""

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

from flaxft.data.tokenizer import copy_tokenizer_files
from flaxft.errors import InputError
from flaxft.files import new_output_dir
from flaxft.models import (
    Family,
    ModelConfig,
    abstract_params,
    family_for_model_type,
    family_of,
    fit_params,
    lora,
    restack,
)

log = logging.getLogger(__name__)



def _canonical_name(key: str, family: Family) -> str:
    """Undoes old spellings: drops the base-model prefix, LayerNorm gamma/beta -> weight/bias."""
    key = key.removeprefix(family.hf.base_prefix)
    if key.endswith(".gamma"):
        key = key[: -len(".gamma")] + ".weight"
    elif key.endswith(".beta"):
        key = key[: -len(".beta")] + ".bias"
    return key


def hf_key(family: Family, architecture: str, name: str) -> str:
    """The state-dict key Hugging Face uses: encoder weights get the base-model prefix
    under a head."""
    if architecture != family.heads["encoder"].__name__ and not name.startswith(family.hf.head_prefixes):
        return family.hf.base_prefix + name
    return name


# ----------------------------------------------------------------------------- configs


def config_from_hf(hf: dict[str, Any], source: str, **overrides: Any) -> tuple[Family, ModelConfig]:
    """(family, config) of a Hugging Face config.json dict; `source` names the file in errors."""
    family = family_for_model_type(hf.get("model_type"), source)
    family.hf.check_config(hf, source)
    kwargs = family.config_class.hf_values(hf, source)
    if hf.get("id2label"):
        labels = {int(i): name for i, name in hf["id2label"].items()}
        kwargs["id2label"] = tuple(labels[i] for i in range(len(labels)))
        kwargs["num_labels"] = len(labels)
    kwargs.update(overrides)
    try:
        return family, family.config_class(**kwargs)
    except TypeError as e:
        raise InputError(f"{source}: {e}") from None


def config_to_hf(config: ModelConfig, architecture: str) -> dict[str, Any]:
    """A Hugging Face config.json dict for `architecture` (training options left out)."""
    family = family_of(architecture)
    hf = {"architectures": [architecture], "model_type": family.model_types[0]}
    hf.update(family.hf.config_extras(config, architecture))
    hf.update(config.hf_dict())
    names = config.id2label or tuple(f"LABEL_{i}" for i in range(config.num_labels))
    hf["id2label"] = {str(i): name for i, name in enumerate(names)}
    hf["label2id"] = {name: i for i, name in enumerate(names)}
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
    family: Family,
    config: ModelConfig,
    architecture: str,
    source: str,
) -> dict:
    """flaxft params (unrolled layout, param_dtype) from a Hugging Face state dict.
    A missing or misshapen weight is an InputError naming it and `source`."""
    by_name: dict[str, np.ndarray] = {}
    for key, value in state.items():
        by_name.setdefault(_canonical_name(key, family), value)
    by_name = family.hf.read_aliases(by_name, config)

    expected = abstract_params(family.architectures[architecture](config.replace(scan_layers=False)))
    expected = traverse_util.flatten_dict(expected)
    flat: dict[tuple[str, ...], jax.Array] = {}
    for w in family.hf.weight_table(config, architecture):
        tensor = by_name.pop(w.hf_name, None)
        if tensor is None:
            raise InputError(f"{source}: missing weight {hf_key(family, architecture, w.hf_name)!r}")
        want = jax.eval_shape(w.to_hf, jax.ShapeDtypeStruct(expected[w.path].shape, jnp.float32)).shape
        if tuple(tensor.shape) != tuple(want):
            raise InputError(
                f"{source}: weight {hf_key(family, architecture, w.hf_name)!r} has shape {tuple(tensor.shape)} "
                f"but the config implies {tuple(want)}"
            )
        flat[w.path] = jnp.asarray(w.from_hf(np.asarray(tensor)), dtype=config.weights_dtype)

    unused = family.hf.head_prefixes + tuple(f"{part}." for part in family.optional_encoder_params)
    for name in list(by_name):
        if name.startswith(unused):  # another head's weights: not used by this one
            log.info("%s: %s unused by %s", source, name, architecture)
            del by_name[name]
    if by_name:
        raise InputError(f"{source}: unexpected weight {sorted(by_name)[0]!r} (not part of a {family.name} model)")
    return traverse_util.unflatten_dict(flat)


def saved_model(path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """The model whose weights a Hugging Face folder holds, its weights left unread:
    config.json's architecture, or the bare encoder for a head flaxft does not have.
    `overrides` set config fields."""
    hf = read_hf_config(path)
    family, config = config_from_hf(hf, str(Path(path) / "config.json"), **overrides)
    architecture = (hf.get("architectures") or [None])[0]
    return family.hf_architectures.get(architecture, family.heads["encoder"])(config)


def from_pretrained(
    path: str | os.PathLike, architecture: str | None = None, seed: int = 0, **overrides: Any
) -> tuple[nn.Module, dict]:
    """Reads a Hugging Face model folder of any supported family: returns (model, params).

    The head comes from config.json's `architectures` unless `architecture` names another
    one of the family; then weights of the new head that the folder lacks are initialised
    afresh from `seed`. `overrides` set config fields (e.g. dtype="bfloat16",
    scan_layers=True, num_labels=3); params come in the layout `scan_layers` asks for.
    """
    hf = read_hf_config(path)
    source = str(Path(path) / "config.json")
    saved = saved_model(path, **overrides)
    family, config, saved_architecture = family_of(saved), saved.config, type(saved).__name__
    architecture = architecture or (hf.get("architectures") or [saved_architecture])[0]
    if architecture not in family.hf_architectures:
        raise InputError(f"{source}: architecture {architecture!r} is not one of {sorted(family.hf_architectures)}")
    state, weights_file = read_state_dict(path)
    params = params_from_state_dict(state, family, config, saved_architecture, weights_file)
    model = family.architectures[architecture](config)
    if architecture != saved_architecture:
        return model, fit_params(params, model, seed)
    return model, restack(params, model, config.scan_layers)


# ----------------------------------------------------------------------------- writing


SENTENCE_TRANSFORMERS_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")


def copy_sentence_transformers_files(src: str | os.PathLike, dst: str | os.PathLike) -> bool:
    """Copies what makes Hugging Face folder `src` a sentence-transformers model (its
    modules.json, the folders of the modules it lists, such as 1_Pooling/, and its
    configs) into `dst`; False, copying nothing, when `src` has no modules.json."""
    src, dst = Path(src), Path(dst)
    if not (src / "modules.json").is_file():
        return False
    try:
        modules = json.loads((src / "modules.json").read_text())
        folders = [m["path"] for m in modules if m.get("path")]
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise InputError(f"{src / 'modules.json'}: not a sentence-transformers module list ({e})") from None
    dst.mkdir(parents=True, exist_ok=True)
    for name in SENTENCE_TRANSFORMERS_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    for folder in folders:
        if (src / folder).is_dir():
            shutil.copytree(src / folder, dst / folder, dirs_exist_ok=True)
    return True


def state_dict_from_params(params: dict, model: nn.Module) -> dict[str, np.ndarray]:
    """Hugging Face state dict (float32 numpy, tied decoder left out) of `model`'s params,
    in either layout; LoRA adapters merged into their kernels."""
    model, params = lora.merge(model, nn.meta.unbox(params))
    family, architecture = family_of(model), type(model).__name__
    params = restack(jax.device_get(nn.meta.unbox(params)), model, scan_layers=False)
    flat = traverse_util.flatten_dict(params)
    state = {
        hf_key(family, architecture, w.hf_name): np.ascontiguousarray(w.to_hf(np.asarray(flat[w.path], np.float32)))
        for w in family.hf.weight_table(model.config, architecture)
    }
    return family.hf.write_extras(state, model.config)


def save_pretrained(
    model: nn.Module, params: dict, out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
    sentence_transformers_dir: str | os.PathLike | None = None,
) -> None:
    """Writes a Hugging Face folder (config.json with `architectures`, model.safetensors
    with any LoRA adapters merged into their kernels,
    the tokenizer files found in `tokenizer_dir`, and the sentence-transformers files
    found in `sentence_transformers_dir`) that `transformers.AutoModel*` loads with no
    missing or unexpected weights (and `SentenceTransformer` as the source was loaded).

    A model trained as several Hugging Face models (ELECTRA pretraining's generator and
    discriminator) names them by subfolder in `hf_models(params)`: each is written, with
    the tokenizer, to `out_dir` ("") or its subfolder.

    The folder appears whole or not at all; an existing non-empty `out_dir` is an
    InputError (nothing is overwritten).
    """
    from safetensors.numpy import save_file

    parts = model.hf_models(params) if hasattr(model, "hf_models") else {"": (model, params)}
    states = {folder: state_dict_from_params(part_params, part) for folder, (part, part_params) in parts.items()}
    with new_output_dir(out_dir) as tmp:
        for folder, (part, _) in parts.items():
            target = tmp / folder
            target.mkdir(exist_ok=True)
            save_file(states[folder], str(target / "model.safetensors"), metadata={"format": "pt"})
            config = config_to_hf(part.config, type(part).__name__)
            (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            if tokenizer_dir is not None:
                copy_tokenizer_files(tokenizer_dir, target)
        if sentence_transformers_dir is not None:
            copy_sentence_transformers_files(sentence_transformers_dir, tmp)
