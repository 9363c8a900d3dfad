"""The train and eval steps (pure, module level) and the pretraining loop.

    train_step(state, batch) -> (state, metrics)

is jitted once with explicit shardings and the state donated. Dropout keys come from
`fold_in(key(seed), step)` and batches from the loader's step, so a resumed run computes
exactly what an uninterrupted one would. The loop reads metrics one step late, so
dispatching the next step never waits for the last.
"""

import dataclasses
import functools
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from flaxft import checkpoint, data, hf, optim, sharding
from flaxft import config as config_lib
from flaxft import metrics as metrics_lib
from flaxft.errors import InputError
from flaxft.models import ARCHITECTURES, init_params
from flaxft.preemption import Preemption
from flaxft.tasks import pretraining

Batch = dict[str, jax.Array]


class NonFiniteLoss(Exception):
    """The loss or gradients went NaN/Inf and config.on_nonfinite is "abort"."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    skipped: jax.Array  # updates dropped because the loss or gradients were not finite


# ----------------------------------------------------------------------------- steps


def _microbatches(batch: Batch, k: int) -> Batch:
    """[G, ...] -> [k, G/k, ...], microbatch i taking rows i, i+k, ...: every device's
    shard of the batch contributes equally to every microbatch (no resharding)."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    task: ModuleType,
    schedule: optax.Schedule,
    seed: int,
    grad_accum_steps: int,
    skip_nonfinite: bool,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch, accumulating gradients over microbatches.

    batch: the task's fields, each with leading dimension G (global batch size).
    skip_nonfinite: drop the update (params and optimizer state unchanged) when the loss
    or the gradients are not finite.
    Returns the new state and scalar metrics: the task's, grad_norm, learning_rate,
    nonfinite (1.0 when this step's loss or gradients were not finite), skipped_steps.
    """
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    norm = task.normalizers(batch)

    def grads_and_metrics(microbatch: Batch, dropout_rng: jax.Array):
        def loss_fn(params):
            out = model.apply(
                {"params": params}, **task.model_inputs(microbatch), deterministic=False,
                rngs={"dropout": dropout_rng},
            )
            return task.loss_and_metrics(out, microbatch, norm)

        (_, step_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return grads, step_metrics

    if grad_accum_steps == 1:
        grads, step_metrics = grads_and_metrics(batch, rng)
    else:
        micro = _microbatches(batch, grad_accum_steps)

        def accumulate(total, xs):
            microbatch, i = xs
            return jax.tree.map(jnp.add, total, grads_and_metrics(microbatch, jax.random.fold_in(rng, i))), None

        first = jax.tree.map(lambda x: x[0], micro)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grads_and_metrics, first, rng))
        (grads, step_metrics), _ = jax.lax.scan(accumulate, zeros, (micro, jnp.arange(grad_accum_steps)))

    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(step_metrics["loss"]) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    skipped = state.skipped
    if skip_nonfinite:
        keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
        params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
        skipped = skipped + (~finite).astype(jnp.int32)
    step_metrics = {
        **step_metrics,
        "grad_norm": grad_norm,
        "learning_rate": schedule(state.step),
        "nonfinite": (~finite).astype(jnp.float32),
        "skipped_steps": skipped.astype(jnp.float32),
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, skipped=skipped)
    return new_state, step_metrics


def eval_step(params: Any, batch: Batch, *, model: nn.Module, task: ModuleType) -> dict[str, jax.Array]:
    """The task's metrics on one batch, dropout off."""
    out = model.apply({"params": params}, **task.model_inputs(batch), deterministic=True)
    return task.loss_and_metrics(out, batch, task.normalizers(batch))[1]


# ----------------------------------------------------------------------------- state


def _init_boxed(model, tx, rng, seq_len: int) -> TrainState:
    params = init_params(model, rng, seq_len)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), skipped=jnp.zeros((), jnp.int32)
    )


def state_layout(model, tx, mesh, rules, rng, seq_len: int) -> tuple[TrainState, TrainState]:
    """(shardings, abstract state): where every leaf of the train state lives, from
    abstract shapes and the model's logical axis names; nothing is allocated."""
    abstract = jax.eval_shape(functools.partial(_init_boxed, model, tx, seq_len=seq_len), rng)
    return sharding.logical_shardings(abstract, mesh, rules), nn.meta.unbox(abstract)


def init_train_state(model, tx, rng, seq_len: int, shardings: TrainState, params: Any = None) -> TrainState:
    """A fresh train state created directly into `shardings` (never whole on one device);
    with `params` (from init_from), those parameters placed there instead of random ones."""
    if params is None:
        init = functools.partial(_init_boxed, model, tx, seq_len=seq_len)
        return jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
    params = jax.device_put(params, shardings.params)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    step, skipped = (jax.device_put(np.zeros((), np.int32), shardings.step) for _ in range(2))
    return TrainState(step=step, params=params, opt_state=opt_state, skipped=skipped)


def jit_train_step(config, model, tx, task, state_shardings, batch_sharding):
    """`train_step` for this config, jitted with explicit shardings and the state donated."""
    step = functools.partial(
        train_step, model=model, tx=tx, task=task, schedule=optim.learning_rate_schedule(config), seed=config.seed,
        grad_accum_steps=config.grad_accum_steps, skip_nonfinite=config.on_nonfinite == "skip",
    )
    return jax.jit(step, in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
                   donate_argnums=0)


def _with_shardings(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


# ----------------------------------------------------------------------------- setup


@dataclasses.dataclass
class Run:
    """Everything a training run needs, built and checked before the workdir is touched."""

    config: ml_collections.ConfigDict
    workdir: Path
    task: ModuleType
    model: nn.Module
    tx: optax.GradientTransformation
    mesh: jax.sharding.Mesh
    rules: tuple
    train_loader: Any  # PretrainLoader or FinetuneLoader: get_batch, next, state, restore, close
    eval_loader: Any
    eval_step: Any  # (params, batch) -> device outputs; pure, jitted by the loop
    evaluate: Any  # (outputs_of: batch index -> host outputs) -> eval_ metrics; process 0 may write files
    init_params: Any  # from config.init_from, or None
    write_tokenizer: Callable[[Path], Any] | None  # fills WORKDIR/tokenizer when it is not there yet

    @property
    def is_writer(self) -> bool:
        return jax.process_index() == 0


def _tokenizer(config: ml_collections.ConfigDict, workdir: Path, documents: list[str]):
    """The run's tokenizer and how to write it into the workdir: the configured folder
    (copied), the one a previous run of this workdir trained, or a WordPiece tokenizer
    trained now (saved)."""
    if config.data.tokenizer:
        tokenizer = data.load_tokenizer(config.data.tokenizer)
        folder = Path(config.data.tokenizer).expanduser()  # a folder, or a file in one
        return tokenizer, functools.partial(hf.copy_tokenizer_files, folder if folder.is_dir() else folder.parent)
    if (workdir / "tokenizer").is_dir():
        return data.load_tokenizer(str(workdir / "tokenizer")), None
    tokenizer = data.train_wordpiece(documents, config.model.vocab_size)
    return tokenizer, functools.partial(data.save_tokenizer, tokenizer)


def _check_batch_layout(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    shards = sharding.batch_shards(mesh) * config.grad_accum_steps
    if config.global_batch_size % shards:
        raise InputError(
            f"config.global_batch_size ({config.global_batch_size}) does not divide evenly over "
            f"{sharding.batch_shards(mesh)} batch shards (mesh data x fsdp) x "
            f"{config.grad_accum_steps} microbatches"
        )
    if config.global_batch_size % jax.process_count():
        raise InputError(
            f"config.global_batch_size ({config.global_batch_size}) does not divide over "
            f"{jax.process_count()} processes"
        )


def layout(config: ml_collections.ConfigDict, model: nn.Module) -> tuple[jax.sharding.Mesh, tuple]:
    """The mesh and logical rules, checked against the batch size and the model's FSDP layout."""
    mesh, rules = sharding.make_mesh(config.mesh), sharding.logical_rules(config.mesh)
    _check_batch_layout(config, mesh)
    abstract_boxed = jax.eval_shape(lambda: init_params(model, jax.random.key(config.seed), config.seq_len))
    sharding.check_fsdp_layout(nn.meta.unbox(abstract_boxed), sharding.logical_shardings(abstract_boxed, mesh, rules), mesh)
    return mesh, rules


def prepare(config: ml_collections.ConfigDict, workdir: Path, resuming: bool) -> Run:
    """Reads and checks every input of a pretraining run (config, corpus, tokenizer, mesh,
    init_from) and builds it. Raises InputError on bad input; writes nothing."""
    task = pretraining
    documents = data.read_documents(config.data.path, config.data.text_column)
    tokenizer, write_tokenizer = _tokenizer(config, workdir, documents)
    vocab = tokenizer.get_vocab_size()
    if vocab != config.model.vocab_size:
        source = config.data.tokenizer or "the tokenizer trained on the corpus"
        raise InputError(f"{source} has {vocab} tokens but config.model.vocab_size is {config.model.vocab_size}")
    model = ARCHITECTURES[task.architecture(config.data.format)](config_lib.model_config(config))
    mesh, rules = layout(config, model)
    params = None
    if config.init_from and not resuming:
        params = checkpoint.load_init_params(config.init_from, model, config.seed)

    cache_dir = config.data.cache_dir or str(workdir / "cache")
    build = functools.partial(
        data.build_examples, documents, tokenizer, config.seq_len, config.data.format, config.seed, cache_dir,
        eval_fraction=config.data.eval_fraction, short_seq_prob=config.data.short_seq_prob,
    )
    loader_args = dict(
        vocab_size=vocab, special_ids=data.special_token_ids(tokenizer), mask_rate=config.data.mask_rate,
        max_predictions=config.data.max_predictions_per_seq, whole_word=config.data.whole_word_masking,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    eval_loader = data.PretrainLoader(
        build(split="eval"), config.global_batch_size, config.seed + 1, shuffle=False, prefetch=0, **loader_args
    )
    return Run(
        config=config, workdir=workdir, task=task, model=model, tx=optim.make_optimizer(config), mesh=mesh,
        rules=rules, init_params=params, write_tokenizer=write_tokenizer,
        train_loader=data.PretrainLoader(build(split="train"), config.global_batch_size, config.seed, **loader_args),
        eval_loader=eval_loader,
        eval_step=functools.partial(eval_step, model=model, task=task),
        evaluate=functools.partial(mean_metrics, num_batches=config.eval_batches),
    )


def _write_workdir(run: Run) -> None:
    """The run's own files: config.json and its tokenizer (process 0)."""
    run.workdir.mkdir(parents=True, exist_ok=True)
    if run.is_writer:
        folder = run.workdir / "tokenizer"
        if run.write_tokenizer is not None and not folder.exists():
            staging = run.workdir / ".tokenizer.tmp"  # anything a crash left here goes with it
            shutil.rmtree(staging, ignore_errors=True)
            (staging / folder.name).mkdir(parents=True)
            run.write_tokenizer(staging / folder.name)
            os.replace(staging / folder.name, folder)
            shutil.rmtree(staging)
        (run.workdir / "config.json").write_text(config_lib.to_json(run.config))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("workdir written")


# ----------------------------------------------------------------------------- loop


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains as `config` says (pretraining, or fine-tuning when config.task.name names a
    task), in `workdir`, resuming from its newest checkpoint.

    Checks every input before compiling or writing anything. Returns the last logged
    metrics ({} when the workdir had already finished). Raises InputError on bad input,
    NonFiniteLoss when the loss goes NaN/Inf under on_nonfinite="abort".
    """
    config_lib.validate(config)
    workdir = Path(workdir)
    keep, keep_every = config.checkpoint.keep, config.checkpoint.keep_every_steps
    has_checkpoints = (workdir / checkpoint.CHECKPOINTS).is_dir()
    ckpt = checkpoint.TrainCheckpointer(workdir, keep, keep_every) if has_checkpoints else None
    resuming = ckpt is not None and ckpt.latest_step() is not None
    if config.task.name == "pretraining":
        prepared = prepare(config, workdir, resuming)
    else:
        from flaxft import finetune

        prepared = finetune.prepare(config, workdir, resuming)  # may set num_train_steps from task.epochs
    if resuming and ckpt.latest_step() >= config.num_train_steps:
        print(f"{workdir}: already trained to step {ckpt.latest_step()} of {config.num_train_steps}; nothing to do")
        prepared.train_loader.close()
        ckpt.close()
        return {}
    ckpt = ckpt or checkpoint.TrainCheckpointer(workdir, keep, keep_every)
    try:
        with prepared.mesh, nn.logical_axis_rules(prepared.rules):
            result = _train(prepared, ckpt)
    finally:
        prepared.train_loader.close()
    # Closed only after success: closing after a failed restore makes Orbax's background
    # threads print tracebacks over the one-line error.
    ckpt.close()
    return result


def _train(run: Run, ckpt: checkpoint.TrainCheckpointer) -> dict[str, float]:
    config, model = run.config, run.model
    rng = jax.random.key(config.seed)
    state_shardings, abstract_state = state_layout(model, run.tx, run.mesh, run.rules, rng, config.seq_len)
    restored = ckpt.restore_latest(_with_shardings(abstract_state, state_shardings), model, config.checkpoint.fallback)
    _write_workdir(run)
    if restored is None:
        state = init_train_state(model, run.tx, rng, config.seq_len, state_shardings, run.init_params)
        start = 0
    else:
        state, data_state, start = restored
        run.train_loader.restore(data_state)
        if run.is_writer:
            print(f"resumed from step {start}")
    if run.is_writer:  # what an interrupted run logged past its newest checkpoint is logged again
        metrics_lib.truncate_metrics(run.workdir, start)

    batch_sharding = sharding.batch_sharding(run.mesh)
    step_fn = jit_train_step(config, model, run.tx, run.task, state_shardings, batch_sharding)
    eval_fn = jax.jit(run.eval_step, in_shardings=(state_shardings.params, batch_sharding))
    to_global = functools.partial(_to_global, batch_sharding=batch_sharding)
    t0 = time.monotonic()
    step_fn = step_fn.lower(state, to_global(run.train_loader.get_batch(start))).compile()
    if run.is_writer:
        print(f"{type(model).__name__}: {_count(state.params):,} parameters; "
              f"{sharding.describe(run.mesh, abstract_state, state_shardings)}")
        print(f"train step compiled in {time.monotonic() - t0:.1f}s")
    if jax.process_count() > 1:
        print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local devices, "
              f"loads {config.global_batch_size // jax.process_count()} of {config.global_batch_size} rows per batch")

    writer = metrics_lib.MetricsWriter(run.workdir, active=run.is_writer, purge_step=start + 1)
    progress = metrics_lib.ProgressBar(config.num_train_steps, start, active=run.is_writer)
    log = _MetricsReader(config, writer, progress, start)
    try:
        with Preemption() as preemption:
            for step in range(start, config.num_train_steps):
                state, step_metrics = step_fn(state, to_global(next(run.train_loader)))
                done = step + 1
                log.dispatched(done, step_metrics)
                final = done == config.num_train_steps
                stop = preemption.stop_at(done)
                if done % config.eval_every_steps == 0 or final:
                    log.flush()
                    eval_scalars = run.evaluate(
                        lambda i, params=state.params: _fetch(eval_fn(params, to_global(run.eval_loader.get_batch(i))))
                    )
                    writer.write(done, eval_scalars)
                    progress.message(f"eval step {done}: " + "  ".join(f"{k} {v:.4f}" for k, v in eval_scalars.items()))
                    log.last.update(eval_scalars)
                    log.restart_clock(done)
                if done % config.checkpoint_every_steps == 0 or final or stop:
                    log.flush()  # in abort mode, never save a state whose loss is not finite
                    ckpt.save(done, state, model, run.train_loader.state(), config.to_dict())
                if stop:
                    ckpt.wait()
                    progress.message(f"preempted: stopped at step {done}; checkpoint saved in {ckpt.root / str(done)}")
                    return log.last
    finally:
        ckpt.wait()
        writer.close()
    if run.is_writer:
        plot = metrics_lib.plot_losses(run.workdir)
        print(f"done: step {config.num_train_steps}; checkpoints in {ckpt.root}; plot {plot}")
    return log.last


class _MetricsReader:
    """Reads each logged step's metrics one step late (after the next step is dispatched),
    checks they are finite, and writes them with the training throughput."""

    def __init__(self, config, writer, progress, start: int):
        self.config, self.writer, self.progress = config, writer, progress
        self.tokens_per_step = config.global_batch_size * config.seq_len
        self.first_step = start + 1  # logged too, so the starting loss shows at once
        self.pending = None
        self.last: dict[str, float] = {}  # the newest logged metrics
        self.restart_clock(start)

    def restart_clock(self, step: int) -> None:
        self.clock_step, self.clock_time = step, time.monotonic()

    def dispatched(self, step: int, device_metrics) -> None:
        """Called right after `step` is dispatched: reads the previous step's metrics."""
        self.flush()
        if self._logged(step) or self.config.on_nonfinite == "abort":  # abort mode checks every step
            self.pending = (step, device_metrics)

    def _logged(self, step: int) -> bool:
        return step % self.config.log_every_steps == 0 or step in (self.first_step, self.config.num_train_steps)

    def flush(self) -> None:
        """Reads the pending step's metrics, if any; raises NonFiniteLoss in abort mode."""
        if self.pending is None:
            return
        step, device_metrics = self.pending
        self.pending = None
        scalars = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        if scalars.pop("nonfinite") and self.config.on_nonfinite == "abort":
            raise NonFiniteLoss(f"loss or gradients not finite at step {step} (loss {scalars['loss']}); "
                                "the newest checkpoint is from before it")
        if not self._logged(step):
            return
        now = time.monotonic()
        scalars["tokens_per_sec"] = self.tokens_per_step * (step - self.clock_step) / max(now - self.clock_time, 1e-9)
        self.restart_clock(step)
        self.writer.write(step, scalars)
        self.progress.update(step, scalars["loss"], scalars["tokens_per_sec"])
        self.last = scalars


def _to_global(batch: dict[str, np.ndarray], batch_sharding) -> Batch:
    """This host's rows -> one global jax.Array per field, split over the batch axes."""
    return {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in batch.items()}


def _fetch(tree):
    """Device outputs -> numpy on every process (batch-split arrays gathered whole)."""
    return multihost_utils.process_allgather(tree, tiled=True)


def mean_metrics(outputs_of, num_batches: int) -> dict[str, float]:
    """Mean of per-batch metric dicts over the first `num_batches` eval batches, keys
    prefixed with `eval_`."""
    totals: dict[str, float] = {}
    for i in range(num_batches):
        for k, v in outputs_of(i).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return {f"eval_{k}": v / num_batches for k, v in totals.items()}


def _count(params) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
