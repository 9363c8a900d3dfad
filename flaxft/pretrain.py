"""Pretraining setup: corpus, tokenizer, masked examples, the family's pretraining head,
mesh and optimizer, built into a `flaxft.contracts.Run` for the loop.

    python -m flaxft.main --config configs/pretrain_tiny.py --workdir runs/demo
"""

import dataclasses
import functools
import hashlib
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
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


def tokenizer_of(config: ml_collections.ConfigDict, workdir: Path, kind: str):
    """The run's tokenizer and how to write it into the workdir: the configured folder or
    file (copied), the one a previous run of this workdir trained (nothing to write), or
    one of `kind` trained now on a sample of the corpus (`config.data.tokenizer_sample_mb`;
    saved)."""
    if config.data.tokenizer:
        return data.load_tokenizer(config.data.tokenizer), functools.partial(copy_tokenizer_files,
                                                                              config.data.tokenizer)
    if (workdir / TOKENIZER).is_dir():
        return data.load_tokenizer(str(workdir / TOKENIZER)), None
    if kind not in TRAINERS:
        raise InputError(f"config.data.tokenizer is empty, and flaxft trains no {kind} tokenizer "
                         f"(model family {config.model.family!r}); give a tokenizer folder")
    documents = data.sample_documents(config.data.path, config.data.text_column,
                                      int(config.data.tokenizer_sample_mb * 2**20), _chunk_bytes(config))
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
    streams = config.data.streams or jax.process_count()
    if streams % jax.process_count():
        raise InputError(f"config.data.streams ({streams}) must be a multiple of the process count "
                         f"({jax.process_count()})")
    chunks = corpus_plan(config, streams)
    tokenizer, write_tokenizer = tokenizer_of(config, workdir, model_family.tokenizer)
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
    train_loader, eval_loader = loaders(config, workdir, chunks, tokenizer)
    return Run(
        config=config, workdir=workdir, task=task, model=model, tx=tx, mesh=mesh, rules=rules,
        train_loader=train_loader, evaluation=MeanOverBatches(eval_loader, config.eval_batches, task),
        init_params=init_params, trainable=trainable, learning_rate_groups=learning_rate_groups,
        write_files=checkpoint.run_files_writer(write_tokenizer, config.init_from),
    )


def loaders(config: ml_collections.ConfigDict, workdir: Path, chunks: list[list[data.Chunk]],
            tokenizer: Tokenizer) -> tuple[data.PretrainLoader, data.PretrainLoader]:
    """The training loader and the (unshuffled) evaluation loader of the held-out
    documents, over the rows of this process's streams of `chunks`, prepared in the
    background into the cache (`config.data.cache_dir`, else WORKDIR/cache)."""
    process, processes = jax.process_index(), jax.process_count()
    per_process = len(chunks) // processes  # the loaders check that the streams divide evenly
    mine = range(process * per_process, (process + 1) * per_process)
    workers = workers_of(config)
    preparation = data.Preparation([(k, i, c) for k in mine for i, c in enumerate(chunks[k])],
                                   recipe_of(config, tokenizer), cache_dir_of(config, workdir), workers,
                                   show_progress=process == 0)
    if processes > 1:
        mine_chunks = [c for k in mine for c in chunks[k]]
        files = sorted({Path(path).name if path else "documents" for c in mine_chunks for path in c.paths})
        print(f"process {process}/{processes}: data streams {mine.start}-{mine.stop - 1} of {len(chunks)}, "
              f"{sum(c.num_bytes for c in mine_chunks) / 1e6:,.1f} MB of text in {len(files)} file(s): "
              f"{', '.join(files[:4])}{', ...' if len(files) > 4 else ''}; up to {workers} preparing worker(s)",
              flush=True)
    special_ids = data.special_token_ids(tokenizer)
    options = dict(
        vocab_size=tokenizer.get_vocab_size(), special_ids=special_ids,
        mask_rate=config.data.mask_rate, max_predictions=config.data.max_predictions_per_seq,
        whole_word=config.data.whole_word_masking, process_index=process, process_count=processes,
    )
    rows = functools.partial(data.PreparedRows, preparation, chunks=chunks, special_ids=special_ids)
    train = data.PretrainLoader(rows("train"), config.global_batch_size, config.seed,
                                mix_chunks=config.data.mix_chunks, **options)
    evaluation = data.PretrainLoader(rows("eval"), config.global_batch_size, config.seed + 1, shuffle=False,
                                     chunk_order_seed=config.seed, prefetch=0, **options)
    return train, evaluation


def workers_of(config: ml_collections.ConfigDict) -> int:
    """config.data.workers, where -1 (one per core) shares this host's cores among the
    run's processes on it (several processes per host, as one per GPU, would each start
    one worker per core otherwise)."""
    if config.data.workers != -1:
        return config.data.workers
    cores = len(os.sched_getaffinity(0))
    if jax.process_count() == 1:
        return cores
    host = np.frombuffer(hashlib.sha256(socket.gethostname().encode()).digest()[:4], np.int32)
    hosts = multihost_utils.process_allgather(host)
    return max(1, cores // int((np.asarray(hosts).ravel() == host[0]).sum()))


def recipe_of(config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> data.Recipe:
    """How the run makes rows of a chunk."""
    return data.Recipe(tokenizer.to_str(), config.seq_len, config.data.format, config.seed,
                       config.data.short_seq_prob, config.data.eval_fraction)


def cache_dir_of(config: ml_collections.ConfigDict, workdir: Path) -> Path:
    """Where prepared chunks are kept: config.data.cache_dir, else WORKDIR/cache."""
    return Path(config.data.cache_dir or Path(workdir) / "cache").expanduser()


def corpus_plan(config: ml_collections.ConfigDict, streams: int) -> list[list[data.Chunk]]:
    """The chunks of each of `streams` streams of the run's corpus."""
    return data.corpus_chunks(config.data.path, config.data.text_column, streams, _chunk_bytes(config))


def _chunk_bytes(config: ml_collections.ConfigDict) -> int:
    return int(config.data.chunk_mb * 2**20)
