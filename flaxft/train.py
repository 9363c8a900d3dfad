"""The train and eval steps (pure, module level) and the pretraining loop.

    train_step(state, batch) -> (state, metrics)

is jitted once with explicit shardings and the state donated. Dropout keys come from
`fold_in(key(seed), step)`, so a resumed run draws the same numbers. The loop reads
metrics one step late, so dispatching the next step never waits for the last.
"""

import functools
import logging
import math
import time
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

from flaxft import checkpoint, config as config_lib, data, metrics as metrics_lib, optim, sharding
from flaxft.errors import InputError
from flaxft.models import ARCHITECTURES, init_params
from flaxft.tasks import pretraining

log = logging.getLogger(__name__)
Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


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
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch, accumulating gradients over microbatches.

    batch: the task's fields, each with leading dimension G (global batch size).
    Returns the new state and scalar metrics (the task's, plus grad_norm and learning_rate).
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

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step_metrics = {**step_metrics, "grad_norm": optax.global_norm(grads), "learning_rate": schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), step_metrics


def eval_step(params: Any, batch: Batch, *, model: nn.Module, task: ModuleType) -> dict[str, jax.Array]:
    """The task's metrics on one batch, dropout off."""
    out = model.apply({"params": params}, **task.model_inputs(batch), deterministic=True)
    return task.loss_and_metrics(out, batch, task.normalizers(batch))[1]


# ----------------------------------------------------------------------------- setup


def _tokenizer(config: ml_collections.ConfigDict, workdir: Path, documents: list[str]):
    """The run's tokenizer: the configured folder, the one a previous run of this workdir
    trained, or a WordPiece tokenizer trained now (into a temporary folder; the caller
    moves it into the workdir once all input has been checked)."""
    if config.data.tokenizer:
        return data.load_tokenizer(config.data.tokenizer), None
    if (workdir / "tokenizer").is_dir():
        return data.load_tokenizer(str(workdir / "tokenizer")), None
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="flaxft-tokenizer-")) / "tokenizer"
    return data.train_wordpiece(documents, config.model.vocab_size, str(folder)), folder


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


def _to_global(batch: dict[str, np.ndarray], batch_sharding) -> Batch:
    """This host's rows -> one global jax.Array per field, split over the batch axes."""
    return {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in batch.items()}


def _init_boxed(model, tx, rng, seq_len: int) -> TrainState:
    params = init_params(model, rng, seq_len)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def state_layout(model, tx, mesh, rules, rng, seq_len: int) -> tuple[TrainState, TrainState]:
    """(shardings, abstract state): where every leaf of the train state lives, from
    abstract shapes and the model's logical axis names; nothing is allocated."""
    abstract = jax.eval_shape(functools.partial(_init_boxed, model, tx, seq_len=seq_len), rng)
    return sharding.logical_shardings(abstract, mesh, rules), nn.meta.unbox(abstract)


def init_train_state(model, tx, rng, seq_len: int, shardings: TrainState) -> TrainState:
    """A fresh train state created directly into `shardings` (never whole on one device)."""
    init = functools.partial(_init_boxed, model, tx, seq_len=seq_len)
    return jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)


# ----------------------------------------------------------------------------- loop


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Pretrains as `config` says, in `workdir` (resuming from its newest checkpoint).

    Checks every input before compiling or writing anything; returns the last logged
    metrics.
    """
    config_lib.validate(config)
    task = pretraining
    workdir = Path(workdir)
    is_writer = jax.process_index() == 0
    ckpt = checkpoint.TrainCheckpointer(workdir) if (workdir / checkpoint.CHECKPOINTS).is_dir() else None
    start = ckpt.latest_step() if ckpt else None
    if start is not None and start >= config.num_train_steps:
        print(f"{workdir}: already trained to step {start} of {config.num_train_steps}; nothing to do")
        return {}

    documents = data.read_documents(config.data.path, config.data.text_column)
    tokenizer, trained_tokenizer = _tokenizer(config, workdir, documents)
    vocab = tokenizer.get_vocab_size()
    if vocab != config.model.vocab_size:
        source = config.data.tokenizer or "the tokenizer trained on the corpus"
        raise InputError(
            f"{source} has {vocab} tokens but config.model.vocab_size is {config.model.vocab_size}"
        )
    special_ids = data.special_token_ids(tokenizer)
    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.logical_rules(config.mesh)
    _check_batch_layout(config, mesh)
    model = ARCHITECTURES[task.architecture(config.data.format)](config_lib.model_config(config))
    tx = optim.make_optimizer(config)
    rng = jax.random.key(config.seed)
    abstract_boxed = jax.eval_shape(lambda: init_params(model, rng, config.seq_len))
    param_shardings = sharding.logical_shardings(abstract_boxed, mesh, rules)
    sharding.check_fsdp_layout(nn.meta.unbox(abstract_boxed), param_shardings, mesh)

    # Every input checked: from here on the workdir is written.
    workdir.mkdir(parents=True, exist_ok=True)
    if trained_tokenizer is not None and is_writer:
        import shutil

        shutil.move(str(trained_tokenizer), workdir / "tokenizer")
    if is_writer:
        (workdir / "config.json").write_text(config_lib.to_json(config))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("workdir written")
        print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local devices, "
              f"loads {config.global_batch_size // jax.process_count()} of {config.global_batch_size} rows per batch")
    cache_dir = config.data.cache_dir or str(workdir / "cache")
    build = functools.partial(
        data.build_examples, documents, tokenizer, config.seq_len, config.data.format, config.seed, cache_dir,
        eval_fraction=config.data.eval_fraction, short_seq_prob=config.data.short_seq_prob,
    )
    loader_args = dict(
        vocab_size=vocab, special_ids=special_ids, mask_rate=config.data.mask_rate,
        max_predictions=config.data.max_predictions_per_seq, whole_word=config.data.whole_word_masking,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    train_loader = data.PretrainLoader(build(split="train"), config.global_batch_size, config.seed, **loader_args)
    eval_loader = data.PretrainLoader(
        build(split="eval"), config.global_batch_size, config.seed + 1, shuffle=False, prefetch=0, **loader_args
    )

    schedule = optim.learning_rate_schedule(config)
    with mesh, nn.logical_axis_rules(rules):
        return _train(config, workdir, task, model, tx, schedule, mesh, rules, rng, ckpt, start,
                      train_loader, eval_loader, is_writer)


def _train(config, workdir, task, model, tx, schedule, mesh, rules, rng, ckpt, start, train_loader,
           eval_loader, is_writer) -> dict[str, float]:
    """The loop proper, inside the mesh and logical-rules context."""
    state_shardings, abstract_state = state_layout(model, tx, mesh, rules, rng, config.seq_len)
    ckpt = ckpt or checkpoint.TrainCheckpointer(workdir)
    if start is None:
        state = init_train_state(model, tx, rng, config.seq_len, state_shardings)
    else:
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_shardings
        )
        state, data_state = ckpt.restore(start, target)
        train_loader.restore(data_state)
        print(f"resumed from step {start}")

    batch_sharding = sharding.batch_sharding(mesh)
    step_fn = jax.jit(
        functools.partial(
            train_step, model=model, tx=tx, task=task, schedule=schedule, seed=config.seed,
            grad_accum_steps=config.grad_accum_steps,
        ),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )
    eval_fn = jax.jit(
        functools.partial(eval_step, model=model, task=task),
        in_shardings=(state_shardings.params, batch_sharding),
    )
    first_batch = _to_global(train_loader.get_batch(int(state.step)), batch_sharding)
    t0 = time.monotonic()
    step_fn = step_fn.lower(state, first_batch).compile()
    if is_writer:
        print(f"{type(model).__name__}: {_count(state.params):,} parameters; "
              f"{sharding.describe(mesh, abstract_state, state_shardings)}")
        print(f"train step compiled in {time.monotonic() - t0:.1f}s")

    writer = metrics_lib.MetricsWriter(workdir, active=is_writer)
    progress = metrics_lib.ProgressBar(config.num_train_steps, int(state.step), active=is_writer)
    tokens_per_step = config.global_batch_size * config.seq_len
    last: dict[str, float] = {}
    pending = None  # (step, device metrics) of the last step, read after the next is dispatched
    clock = {"step": int(state.step), "time": time.monotonic()}  # where throughput is measured from

    def read(step, device_metrics):
        scalars = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        if not math.isfinite(scalars["loss"]):
            raise FloatingPointError(f"non-finite loss {scalars['loss']} at step {step}")
        now = time.monotonic()
        scalars["tokens_per_sec"] = tokens_per_step * (step - clock["step"]) / max(now - clock["time"], 1e-9)
        clock.update(step=step, time=now)
        writer.write(step, scalars)
        progress.update(step, scalars["loss"], scalars["tokens_per_sec"])
        return scalars

    try:
        for step in range(int(state.step), config.num_train_steps):
            batch = _to_global(next(train_loader), batch_sharding)
            state, step_metrics = step_fn(state, batch)
            if pending is not None:
                last = read(*pending)
                pending = None
            done = step + 1
            if done % config.log_every_steps == 0 or done == config.num_train_steps:
                pending = (done, step_metrics)
            if done % config.eval_every_steps == 0 or done == config.num_train_steps:
                if pending is not None:
                    last = read(*pending)
                    pending = None
                eval_scalars = evaluate(eval_fn, state.params, eval_loader, config.eval_batches, batch_sharding)
                writer.write(done, eval_scalars)
                progress.message(f"eval step {done}: " + "  ".join(f"{k} {v:.4f}" for k, v in eval_scalars.items()))
                last.update(eval_scalars)
                clock.update(step=done, time=time.monotonic())  # evaluation is not training throughput
            if done % config.checkpoint_every_steps == 0 or done == config.num_train_steps:
                ckpt.save(done, state, model, train_loader.state(), config.to_dict())
        if pending is not None:
            last = read(*pending)
    finally:
        ckpt.wait()
        ckpt.close()
        writer.close()
        train_loader.close()
    if is_writer:
        plot = metrics_lib.plot_losses(workdir)
        print(f"done: step {config.num_train_steps}; checkpoints in {workdir / checkpoint.CHECKPOINTS}; plot {plot}")
    return last


def evaluate(eval_fn, params, loader, num_batches: int, batch_sharding) -> dict[str, float]:
    """Mean of the task's metrics over the first `num_batches` batches of `loader`, keys
    prefixed with `eval_`."""
    totals: dict[str, float] = {}
    for i in range(num_batches):
        batch_metrics = jax.device_get(eval_fn(params, _to_global(loader.get_batch(i), batch_sharding)))
        for k, v in batch_metrics.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return {f"eval_{k}": v / num_batches for k, v in totals.items()}


def _count(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
