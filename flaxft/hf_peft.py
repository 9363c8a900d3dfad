"""LoRA checkpoints as Hugging Face PEFT adapter folders: what `peft.PeftModel.from_pretrained`
loads onto the base model the run was fine-tuned from.

    adapter_config.json        peft_type LORA, r, lora_alpha, lora_dropout, target_modules
                               (full module names), modules_to_save, base_model_name_or_path,
                               task_type
    adapter_model.safetensors  base_model.model.<module>.lora_A.weight [R, in] and
                               .lora_B.weight [out, R] per adapted module, and the tensors
                               (base_model.model.<module>.weight, .bias, ...) of every module
                               in modules_to_save

modules_to_save are what the adapters alone do not give: the modules holding a parameter
that the base model lacks (a new head, BERT's pooler on a masked-LM checkpoint) or whose
value differs from the base model's (a head or any other parameter that was trained). A
head goes whole, by its top-level module (`classifier`, ModernBERT's `head`), as PEFT
wraps it for a classification task; other modules go by their own names. A kernel that
carries an adapter and differs from the base model's cannot be expressed: InputError
(`export-hf` without --adapter writes the merged model).
"""

import json
import os

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from flaxft import hf
from flaxft.data.tokenizer import copy_tokenizer_files
from flaxft.errors import InputError
from flaxft.files import PathKind, kind_of, new_output_dir
from flaxft.models import family_of, restack

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PEFT's name of the base model inside its wrapper
# PEFT task types by the end of a transformers architecture name (the rest: none).
TASK_TYPES = {"ForSequenceClassification": "SEQ_CLS", "ForTokenClassification": "TOKEN_CLS",
              "ForQuestionAnswering": "QUESTION_ANS"}


def _module(key: str) -> str:
    """The module of a state-dict key: `bert.pooler.dense.weight` -> `bert.pooler.dense`."""
    return key.rsplit(".", 1)[0]


def adapter_state(model: nn.Module, params: dict, base_params: dict) -> tuple[dict[str, np.ndarray], list[str],
                                                                            list[str]]:
    """(tensors as PEFT names them, target_modules, modules_to_save) of a LoRA `model`
    with `params` (either layout) over `base_params` (the base model's, unrolled; any head
    of the family). Float32 numpy tensors; lora_A [R, K] and lora_B [F, R] of each adapted
    kernel [K, F] (contracted and feature axes flattened), which must be a plain torch
    Linear in the family's weight table (its Hugging Face weight the transposed [K, F]
    kernel): InputError naming the parameter otherwise."""
    family, architecture = family_of(model), type(model).__name__
    params = traverse_util.flatten_dict(restack(jax.device_get(nn.meta.unbox(params)), model, scan_layers=False))
    base = traverse_util.flatten_dict(base_params)
    tensors, targets, to_save, table = {}, [], set(), {}
    for w in family.hf.weight_table(model.config, architecture):
        key, raw = hf.hf_key(family, architecture, w.hf_name), np.asarray(params[w.path])
        value = raw.astype(np.float32)
        table[key] = w.to_hf(value)
        same = w.path in base and np.array_equal(np.asarray(base[w.path]).astype(raw.dtype), raw)
        if w.path[-1] != "kernel" or w.path[:-1] + ("lora_a",) not in params:
            if not same:
                head = w.hf_name.startswith(family.hf.head_prefixes)
                to_save.add(w.hf_name.split(".", 1)[0] if head else _module(key))
            continue
        name = "/".join(w.path)
        if not same:
            raise InputError(f"parameter {name} carries a LoRA adapter but is not the base model's (trained, or "
                             "new): the adapter alone cannot reproduce the model (export-hf without --adapter "
                             "writes it merged)")
        a, b = params[w.path[:-1] + ("lora_a",)], params[w.path[:-1] + ("lora_b",)]
        r = a.shape[-1]
        k, f = a.size // r, b.size // r
        probe = np.arange(value.size, dtype=np.float32).reshape(value.shape)
        if not np.array_equal(w.to_hf(probe), probe.reshape(k, f).T):
            raise InputError(f"parameter {name}: its Hugging Face weight is not the transposed kernel of a plain "
                             "Linear, so PEFT cannot hold its adapter")
        targets.append(_module(key))
        tensors[f"{PREFIX}{_module(key)}.lora_A.weight"] = np.asarray(a, np.float32).reshape(k, r).T
        tensors[f"{PREFIX}{_module(key)}.lora_B.weight"] = np.asarray(b, np.float32).reshape(r, f).T
    clash = sorted(set(targets) & to_save)
    if clash:
        raise InputError(f"module {clash[0]} carries a LoRA adapter and has other trained parameters: PEFT cannot "
                         "hold both (export-hf without --adapter writes the model merged)")
    for key, tensor in table.items():
        if any(key.startswith(module + ".") for module in to_save):
            tensors[PREFIX + key] = tensor
    tensors = {key: np.ascontiguousarray(tensor) for key, tensor in sorted(tensors.items())}
    return tensors, targets, sorted(to_save)


def save_adapter(model: nn.Module, params: dict, base_dir: str, out_dir: str | os.PathLike,
                 tokenizer_dir: str | os.PathLike | None = None) -> list[str]:
    """Writes the PEFT adapter folder of LoRA `model` with `params`, fine-tuned from the
    Hugging Face folder `base_dir` (the run's init_from, written as
    base_model_name_or_path), with the tokenizer files found in `tokenizer_dir`; returns
    modules_to_save. InputError for a model without LoRA or a base that is no Hugging Face
    folder of the model's family. The folder appears whole or not at all; an existing
    non-empty `out_dir` is an InputError."""
    from safetensors.numpy import save_file

    cfg, architecture = model.config, type(model).__name__
    if not cfg.lora_rank:
        raise InputError(f"{architecture} has no LoRA adapters (its run had peft.method 'none'): export-hf "
                         "without --adapter writes the model")
    if kind_of(base_dir) is not PathKind.HF_FOLDER:
        raise InputError(f"the run's init_from {base_dir!r} is not a Hugging Face folder: a PEFT adapter needs "
                         "one as its base model (export-hf without --adapter writes the model merged)")
    base_model, base_params = hf.from_pretrained(base_dir)
    if family_of(base_model) is not family_of(model):
        raise InputError(f"{base_dir}: a {family_of(base_model).name} model, but the checkpoint's is "
                         f"{family_of(model).name}")
    tensors, targets, to_save = adapter_state(model, params, restack(base_params, base_model, scan_layers=False))
    config = {
        "peft_type": "LORA",
        "task_type": next((t for end, t in TASK_TYPES.items() if architecture.endswith(end)), None),
        "base_model_name_or_path": str(base_dir),
        "r": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": targets,
        "modules_to_save": to_save or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    with new_output_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if tokenizer_dir is not None:
            copy_tokenizer_files(tokenizer_dir, tmp)
    return to_save

