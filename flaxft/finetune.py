"""Fine-tuning setup: a task's data, a model from `init_from` with a fresh head, and
evaluation over the whole validation split. The loop itself is `flaxft.train`'s.

    python -m flaxft.main --config configs/finetune_classification.py --workdir DIR \
        --config.init_from=HF_FOLDER_OR_FLAXFT_CHECKPOINT
"""

import functools
import json
import math
import os
from pathlib import Path

import jax
import ml_collections

from flaxft import checkpoint, hf, optim
from flaxft import config as config_lib
from flaxft.data import load_tokenizer
from flaxft.errors import InputError
from flaxft.models import ARCHITECTURES, BertConfig
from flaxft.tasks import classification, ner, qa
from flaxft.tasks.finetune_loader import FinetuneLoader, concat_outputs
from flaxft.train import Run, layout

TASKS = {"classification": classification, "ner": ner, "qa": qa}
# The config.task keys each task's `build` reads, besides the files and dataset.
BUILD_KEYS = {
    "classification": ("text_fields", "label_field", "pack", "max_segments"),
    "ner": ("tokens_field", "tags_field", "pack", "max_segments"),
    "qa": ("question_field", "context_field", "answers_field", "doc_stride", "max_query_length"),
}
EVAL_RESULTS = "eval_results.json"
PREDICTIONS = "predictions.jsonl"


def source_config(path: str) -> BertConfig:
    """The model config of `init_from`: a Hugging Face folder or a flaxft checkpoint."""
    folder = Path(path)
    if (folder / "config.json").is_file() and not (folder / checkpoint.CHECKPOINTS).is_dir():
        return hf.config_from_hf(hf.read_hf_config(folder), str(folder / "config.json"))
    return checkpoint.model_of(folder).config


def tokenizer_folder(config: ml_collections.ConfigDict) -> Path:
    """data.tokenizer when set, else the tokenizer that came with init_from."""
    if config.data.tokenizer:
        return Path(config.data.tokenizer)
    if not config.init_from:
        raise InputError("fine-tuning needs config.init_from (a checkpoint with its tokenizer) or config.data.tokenizer")
    folder = Path(config.init_from)
    if (folder / "config.json").is_file() and not (folder / checkpoint.CHECKPOINTS).is_dir():
        return folder
    found = checkpoint.tokenizer_dir_of(folder)
    if found is None:
        raise InputError(f"{folder}: the checkpoint has no tokenizer; set config.data.tokenizer")
    return found


def model_config(config: ml_collections.ConfigDict, num_labels: int, id2label: tuple) -> BertConfig:
    """init_from's model config (else config.model's) with the task's head size and
    config.model's training options and dropout."""
    base = source_config(config.init_from) if config.init_from else config_lib.model_config(config)
    keep = ("dtype", "param_dtype", "scan_layers", "remat_policy", "hidden_dropout_prob",
            "attention_probs_dropout_prob", "classifier_dropout")
    return base.replace(num_labels=max(num_labels, 1), id2label=tuple(id2label),
                        **{k: config.model[k] for k in keep})


def prepare(config: ml_collections.ConfigDict, workdir: Path, resuming: bool) -> Run:
    """Reads and checks a fine-tuning run's inputs and builds it; writes nothing."""
    task = TASKS[config.task.name]
    tokenizer_dir = tokenizer_folder(config)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    keys = {k: config.task[k] for k in ("train_file", "validation_file", "dataset") + BUILD_KEYS[config.task.name]}
    task_data = task.build(tokenizer, config.seq_len, **keys)
    if task_data.validation is None:
        raise InputError("fine-tuning needs validation data: set config.task.validation_file (or a dataset with one)")
    model = ARCHITECTURES[task.architecture()](model_config(config, task_data.num_labels, task_data.id2label))
    if model.config.vocab_size < tokenizer.get_vocab_size():
        raise InputError(f"{tokenizer_dir}: {tokenizer.get_vocab_size()} tokens but the model has "
                         f"{model.config.vocab_size}")
    if config.seq_len > model.config.max_position_embeddings:
        raise InputError(f"config.seq_len ({config.seq_len}) is above the model's max_position_embeddings "
                         f"({model.config.max_position_embeddings})")
    if config.task.epochs:  # the run's length in passes over the training rows
        config.num_train_steps = math.ceil(config.task.epochs * len(task_data.train) / config.global_batch_size)
    mesh, rules = layout(config, model)
    params = None
    if config.init_from and not resuming:
        params = checkpoint.load_init_params(config.init_from, model, config.seed)
    loader_args = dict(process_index=jax.process_index(), process_count=jax.process_count())
    eval_loader = FinetuneLoader(task_data.validation.arrays, config.global_batch_size, shuffle=False, **loader_args)
    evaluate = functools.partial(
        evaluate_task, task=task, features=task_data.validation, loader=eval_loader, workdir=workdir,
        options=dict(n_best_size=config.task.n_best_size, max_answer_length=config.task.max_answer_length)
        if task is qa else {},
    )
    return Run(
        config=config, workdir=workdir, task=task, model=model, tx=optim.make_optimizer(config), mesh=mesh,
        rules=rules, init_params=params, write_tokenizer=functools.partial(hf.copy_tokenizer_files, tokenizer_dir),
        train_loader=FinetuneLoader(task_data.train.arrays, config.global_batch_size, config.seed, **loader_args),
        eval_loader=eval_loader,
        eval_step=functools.partial(output_step, model=model, task=task),
        evaluate=evaluate,
    )


def output_step(params, batch, *, model, task) -> dict[str, jax.Array]:
    """What the task's host-side evaluation needs from one validation batch, dropout off."""
    out = model.apply({"params": params}, **task.model_inputs(batch), deterministic=True)
    return task.eval_outputs(out, batch)


def evaluate_task(outputs_of, *, task, features, loader, workdir: Path, options: dict) -> dict[str, float]:
    """Runs the whole validation split, scores it with the task's metrics, and (process 0)
    writes eval_results.json and predictions.jsonl. Returns the metrics, `eval_`-prefixed."""
    outputs = concat_outputs([outputs_of(i) for i in range(loader.num_batches)], len(features))
    scores, predictions = task.evaluate(outputs, features, **options)
    scores = {f"eval_{k}": float(v) for k, v in scores.items()}
    if jax.process_index() == 0:
        _write_atomically(workdir / EVAL_RESULTS, json.dumps(scores, indent=2, sort_keys=True) + "\n")
        _write_atomically(workdir / PREDICTIONS, "".join(json.dumps(p) + "\n" for p in predictions))
    return scores


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
