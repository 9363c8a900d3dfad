"""Pretraining setup: corpus, tokenizer, masked examples, the family's pretraining head,
mesh and optimizer, built into a `flaxft.contracts.Run` for the loop.

    python -m flaxft.main --config configs/pretrain_tiny.py --workdir runs/demo
"""

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tokenizers import Tokenizer

from flaxft import checkpoint, data, optim, sharding
from flaxft import config as config_lib
from flaxft.contracts import HostBatch, Run, Task, summarize
from flaxft.data.tokenizer import copy_tokenizer_files
from flaxft.errors import InputError
from flaxft.files import TOKENIZER
from flaxft.models import Family, abstract_params, family_named
from flaxft.tasks import Pretraining, ReplacedTokenDetection


@dataclasses.dataclass
class MeanOverBatches:
    """Evaluation of a pretraining run: the task's metrics averaged over the first
    `num_batches` batches of the held-out examples, then summarized by the task
    (`flaxft.contracts.Evaluation`)."""

    loader: data.PretrainLoader
    num_batches: int
    task: Task

    def batch(self, index: int) -> HostBatch:
        return self.loader.get_batch(index)

    def score(self, outputs: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
        totals: dict[str, float] = {}
        for metrics in outputs:
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        means = summarize(self.task, {k: v / len(outputs) for k, v in totals.items()})
        return {f"eval_{k}": v for k, v in means.items()}


# Tokenizers flaxft trains on a corpus, by the kind a family's checkpoints come with.
TRAINERS = {"wordpiece": data.train_wordpiece, "byte_level_bpe": data.train_byte_level_bpe}


def tokenizer_of(config: ml_collections.ConfigDict, workdir: Path, documents: list[str], kind: str):
    """The run's tokenizer and how to write it into the workdir: the configured folder or
    file (copied), the one a previous run of this workdir trained (nothing to write), or
    one of `kind` trained on the corpus now (saved)."""
    if config.data.tokenizer:
        return data.load_tokenizer(config.data.tokenizer), functools.partial(copy_tokenizer_files,
                                                                              config.data.tokenizer)
    if (workdir / TOKENIZER).is_dir():
        return data.load_tokenizer(str(workdir / TOKENIZER)), None
    if kind not in TRAINERS:
        raise InputError(f"config.data.tokenizer is empty, and flaxft trains no {kind} tokenizer "
                         f"(model family {config.model.family!r}); give a tokenizer folder")
    tokenizer = TRAINERS[kind](documents, config.model.vocab_size)
    return tokenizer, functools.partial(data.save_tokenizer, tokenizer)


# Pretraining tasks, by a family's `pretraining_objective`.
OBJECTIVES = {"masked_lm": Pretraining, "replaced_token_detection": ReplacedTokenDetection}


def pretraining_task(config: ml_collections.ConfigDict, model_family: Family) -> Pretraining | ReplacedTokenDetection:
    """The task pretraining trains `model_family` for; InputError for a data format its
    heads cannot learn from (next-sentence pairs for a family without an NSP head)."""
    objective = model_family.pretraining_objective
    task = OBJECTIVES[objective].from_config(config)
    trains_pairs = config.data.format == "bert"
    if trains_pairs and (objective != "masked_lm" or "pretraining" not in model_family.heads):
        raise InputError(f"config.data.format 'bert' trains next-sentence prediction, which model family "
                         f"{model_family.name!r} has no head for; set config.data.format='roberta'")
    weight = config.pretraining.discriminator_weight
    if objective != "replaced_token_detection" and weight != config_lib.default_config().pretraining.discriminator_weight:
        raise InputError(f"config.pretraining.discriminator_weight is for replaced-token detection (ELECTRA); "
                         f"model family {model_family.name!r} pretrains by {objective}")
    return task


def setup(config: ml_collections.ConfigDict, workdir: Path) -> Run:
    """Reads and checks every input of a pretraining run (corpus, tokenizer, model, mesh)
    and builds it. Raises InputError on bad input. Writes nothing to the workdir but the
    examples cache (WORKDIR/cache unless data.cache_dir), once every check has passed. The
    run's config is a copy whose warmup_steps comes from warmup_ratio when that is set."""
    workdir = Path(workdir)
    config = config.copy_and_resolve_references()
    config_lib.resolve_warmup(config)
    model_family = family_named(config.model.family)
    documents = data.read_documents(config.data.path, config.data.text_column)
    tokenizer, write_tokenizer = tokenizer_of(config, workdir, documents, model_family.tokenizer)
    model_family.check_tokenizer(data.tokenizer_kind(tokenizer), config.data.tokenizer or str(workdir / TOKENIZER))
    vocab = tokenizer.get_vocab_size()
    if vocab > config.model.vocab_size:  # fewer is fine: rows past the tokenizer's stay unused (ModernBERT's 50,368)
        source = config.data.tokenizer or "the tokenizer trained on the corpus"
        raise InputError(f"{source} has {vocab} tokens, more than config.model.vocab_size ({config.model.vocab_size})")
    task = pretraining_task(config, model_family)
    model = model_family.architecture(task.head)(config_lib.model_config(config))
    pad = data.special_token_ids(tokenizer)["pad"]
    if pad != model.config.pad_token_id:
        raise InputError(f"the tokenizer's padding id is {pad} but config.model.pad_token_id is "
                         f"{model.config.pad_token_id}")
    mesh, rules = sharding.mesh_for(config.mesh, abstract_params(model, boxed=True), config.global_batch_size,
                                    config.grad_accum_steps)
    tx, trainable, learning_rate_groups = optim.for_model(config, abstract_params(model), model_family.depth,
                                                          model.config.num_hidden_layers)
    init_params = checkpoint.init_params_for(workdir, config.init_from, model, config.seed)
    train_loader, eval_loader = loaders(config, workdir, documents, tokenizer)
    return Run(
        config=config, workdir=workdir, task=task, model=model, tx=tx, mesh=mesh, rules=rules,
        train_loader=train_loader, evaluation=MeanOverBatches(eval_loader, config.eval_batches, task),
        init_params=init_params, trainable=trainable, learning_rate_groups=learning_rate_groups,
        write_files=checkpoint.run_files_writer(write_tokenizer, config.init_from),
    )


def loaders(config: ml_collections.ConfigDict, workdir: Path, documents: list[str],
            tokenizer: Tokenizer) -> tuple[data.PretrainLoader, data.PretrainLoader]:
    """The training loader and the (unshuffled) evaluation loader of the held-out
    documents, over examples built from `documents` (cached)."""
    cache_dir = config.data.cache_dir or str(workdir / "cache")
    build = functools.partial(
        data.build_examples, documents, tokenizer, config.seq_len, config.data.format, config.seed, cache_dir,
        eval_fraction=config.data.eval_fraction, short_seq_prob=config.data.short_seq_prob,
    )
    options = dict(
        vocab_size=tokenizer.get_vocab_size(), special_ids=data.special_token_ids(tokenizer),
        mask_rate=config.data.mask_rate, max_predictions=config.data.max_predictions_per_seq,
        whole_word=config.data.whole_word_masking, process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    train = data.PretrainLoader(build(split="train"), config.global_batch_size, config.seed, **options)
    evaluation = data.PretrainLoader(build(split="eval"), config.global_batch_size, config.seed + 1, shuffle=False,
                                     prefetch=0, **options)
    return train, evaluation
