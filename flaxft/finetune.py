"""Fine-tuning setup: a task's data, a model from `init_from` (any family) with the task's
head, and evaluation over the whole validation split, built into a `flaxft.contracts.Run`.

    python -m flaxft.main --config configs/finetune_classification.py --workdir DIR \
        --config.init_from=HF_FOLDER_OR_FLAXFT_CHECKPOINT
"""

import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from flax import traverse_util

from flaxft import checkpoint, hf, optim, sharding
from flaxft import config as config_lib
from flaxft.contracts import HostBatch, Run
from flaxft.data import Features, FinetuneLoader, PackedFinetuneLoader, concat_outputs, load_tokenizer
from flaxft.data.tokenizer import copy_tokenizer_files, tokenizer_kind
from flaxft.errors import InputError
from flaxft.files import PathKind, kind_of, write_text_atomically
from flaxft.models import Family, ModelConfig, abstract_params, family_named, family_of, lora, new_params
from flaxft.tasks import FINETUNE_TASKS, FinetuneTask, from_config

EVAL_RESULTS = "eval_results.json"
PREDICTIONS = "predictions.jsonl"


@dataclasses.dataclass
class WholeSplit:
    """Evaluation of a fine-tuning run: every validation row, scored by the task's own
    metrics; process 0 writes eval_results.json and predictions.jsonl into the workdir
    (`flaxft.contracts.Evaluation`)."""

    task: FinetuneTask
    features: Features
    loader: FinetuneLoader
    workdir: Path

    @property
    def num_batches(self) -> int:
        return self.loader.num_batches

    def batch(self, index: int) -> HostBatch:
        return self.loader.get_batch(index)

    def score(self, outputs: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
        scores, predictions = self.task.evaluate(concat_outputs(outputs, len(self.features)), self.features)
        scores = {f"eval_{k}": float(v) for k, v in scores.items()}
        if jax.process_index() == 0:
            write_text_atomically(self.workdir / EVAL_RESULTS, json.dumps(scores, indent=2, sort_keys=True) + "\n")
            write_text_atomically(self.workdir / PREDICTIONS, "".join(json.dumps(p) + "\n" for p in predictions))
        return scores


def source_model(path: str) -> nn.Module:
    """The model whose weights `init_from` holds (a Hugging Face folder or a flaxft
    checkpoint); no weights are read."""
    if kind_of(path) is PathKind.HF_FOLDER:
        return hf.saved_model(path)
    return checkpoint.model_of(path)


def tokenizer_source(config: ml_collections.ConfigDict) -> Path:
    """data.tokenizer (a tokenizer folder or file) when set, else the tokenizer folder
    that came with init_from."""
    if config.data.tokenizer:
        return Path(config.data.tokenizer)
    if not config.init_from:
        raise InputError("fine-tuning needs config.init_from (a checkpoint with its tokenizer) or config.data.tokenizer")
    if kind_of(config.init_from) is PathKind.HF_FOLDER:
        return Path(config.init_from)
    found = checkpoint.tokenizer_dir_of(config.init_from)
    if found is None:
        raise InputError(f"{config.init_from}: the checkpoint has no tokenizer; set config.data.tokenizer")
    return found


def base_model(config: ml_collections.ConfigDict, source: nn.Module | None) -> tuple[Family, ModelConfig]:
    """The family and model config of `source` (init_from's `source_model`), else config.model's."""
    if source is not None:
        return family_of(source), source.config
    return family_named(config.model.family), config_lib.model_config(config)


def new_paths(source: nn.Module | None, model: nn.Module) -> frozenset[str]:
    """The paths of `model`'s parameters that `source` (init_from's `source_model`) does not
    provide, so they start afresh: the task's head; every one without a source. From
    abstract shapes only."""
    if source is None:
        return frozenset(traverse_util.flatten_dict(abstract_params(model), sep="/"))
    return new_params(abstract_params(source), model)


def fitted_model_config(config: ml_collections.ConfigDict, base: ModelConfig, num_labels: int,
                        id2label: tuple) -> ModelConfig:
    """`base` (`base_model`'s) with the task's head size, config.model's training
    options and dropout rates (those of the family's DROPOUT_FIELDS that config.model has:
    a checkpoint of another family than config.model.family keeps its own rates for the
    others, and for those config.model leaves unset: None, as BERT's classifier_dropout),
    and the LoRA adapters config.peft asks for (or none)."""
    changes = {k: config.model[k] for k in (*base.TRAINING_OPTIONS, *base.DROPOUT_FIELDS)
               if k in config.model and config.model[k] is not None}
    return base.replace(num_labels=max(num_labels, 1), id2label=tuple(id2label), **changes,
                        **config_lib.lora_fields(config))


def train_loader(config: ml_collections.ConfigDict, task: FinetuneTask, features: Features,
                 mesh: jax.sharding.Mesh) -> FinetuneLoader:
    """The training loader: with task.pack "batches" (for a task that packs), every step's
    examples packed into one row count for the run, a multiple of what the batch axis splits
    into (the mesh's batch shards and the microbatches)."""
    hosts = dict(process_index=jax.process_index(), process_count=jax.process_count())
    if getattr(task, "pack", "none") != "batches":
        return FinetuneLoader(features.arrays, config.global_batch_size, config.seed, **hosts)
    row_multiple = math.lcm(sharding.batch_shards(mesh), config.grad_accum_steps)
    return PackedFinetuneLoader(features.arrays, config.global_batch_size, config.seed, pack=task.pack_batch,
                                num_steps=config.num_train_steps, row_multiple=row_multiple, **hosts)


def setup(config: ml_collections.ConfigDict, workdir: Path) -> Run:
    """Reads and checks a fine-tuning run's inputs (task data, tokenizer, init_from, mesh)
    and builds it; raises InputError on bad input and writes nothing.

    The returned run's config is a copy whose `model` group is the model trained (init_from's
    family and fields, the task's head size) and whose num_train_steps comes from
    task.epochs when that is set (epochs x training rows / global_batch_size, rounded up), and
    whose warmup_steps comes from warmup_ratio when that is set."""
    workdir = Path(workdir)
    task = from_config(FINETUNE_TASKS[config.task.name], config.task)
    tokenizer_dir = tokenizer_source(config)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    source = source_model(config.init_from) if config.init_from else None
    model_family, base = base_model(config, source)
    if config.data.tokenizer:  # a checkpoint's own tokenizer is its own business (klue/roberta-base: WordPiece)
        model_family.check_tokenizer(tokenizer_kind(tokenizer), str(tokenizer_dir))
    task_data = task.build(tokenizer, config.seq_len, train_file=config.task.train_file,
                           validation_file=config.task.validation_file, dataset=config.task.dataset)
    if task_data.validation is None:
        raise InputError("fine-tuning needs validation data: set config.task.validation_file (or a dataset with one)")
    model_config = fitted_model_config(config, base, task_data.num_labels, task_data.id2label)
    model = model_family.architecture(task.head)(model_config)
    if model_config.lora_rank and not lora.adapted_kernels(model):
        kernels = [p for p in traverse_util.flatten_dict(abstract_params(model)) if p[-1] == "kernel"]
        raise InputError(f"config.peft.lora_targets {model_config.lora_targets!r} matches no kernel of "
                         f"{type(model).__name__} (such as {', '.join('/'.join(p) for p in kernels[:3])})")
    if model.config.vocab_size < tokenizer.get_vocab_size():
        raise InputError(f"{tokenizer_dir}: {tokenizer.get_vocab_size()} tokens but the model has "
                         f"{model.config.vocab_size}")
    if config.seq_len > model.config.max_seq_len:
        raise InputError(f"config.seq_len ({config.seq_len}) is above what the model's max_position_embeddings "
                         f"({model.config.max_position_embeddings}) allows ({model.config.max_seq_len})")
    config = config.copy_and_resolve_references()
    config.model = config_lib.model_group(model_family.name, model.config)  # config.json tells the model trained
    if config.task.epochs:  # the run's length in passes over the training rows
        config.num_train_steps = math.ceil(config.task.epochs * len(task_data.train) / config.global_batch_size)
    config_lib.resolve_warmup(config)
    mesh, rules = sharding.mesh_for(config.mesh, abstract_params(model, boxed=True), config.global_batch_size,
                                    config.grad_accum_steps)
    tx, trainable, learning_rate_groups = optim.for_model(config, abstract_params(model), model_family.depth,
                                                          model.config.num_hidden_layers, new_paths(source, model))
    hosts = dict(process_index=jax.process_index(), process_count=jax.process_count())
    eval_loader = FinetuneLoader(task_data.validation.arrays, config.global_batch_size, shuffle=False, **hosts)
    return Run(
        config=config, workdir=workdir, task=task, model=model, tx=tx, mesh=mesh, rules=rules,
        trainable=trainable, learning_rate_groups=learning_rate_groups,
        train_loader=train_loader(config, task, task_data.train, mesh),
        evaluation=WholeSplit(task, task_data.validation, eval_loader, workdir),
        init_params=checkpoint.init_params_for(workdir, config.init_from, model, config.seed),
        write_files=checkpoint.run_files_writer(functools.partial(copy_tokenizer_files, tokenizer_dir),
                                                config.init_from),
    )
