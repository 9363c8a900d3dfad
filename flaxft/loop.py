"""The training loop: pure train and eval steps, the train state, and the loop that
trains any prepared `flaxft.contracts.Run` (pretraining or fine-tuning, any family).

    train_step(state, batch) -> (state, metrics)

is jitted once with explicit shardings and the state donated. Dropout keys come from
`fold_in(key(seed), step)` and batches from the loader's step, so a resumed run computes
exactly what an uninterrupted one would. The loop reads metrics one step late, so
dispatching the next step never waits for the last. It knows the run's contracts
(`flaxft.contracts`), never a task, a data format or a model family.
"""

import functools
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from flaxft import checkpoint, optim, report, sharding
from flaxft.contracts import Batch, HostBatch, Run, Task, summarize
from flaxft.errors import InputError
from flaxft.files import PathKind, kind_of
from flaxft.models.params import init_params
from flaxft.preemption import Interrupted, Preemption


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
    task: Task,
    schedule: optax.Schedule,
    seed: int,
    grad_accum_steps: int,
    skip_nonfinite: bool,
    trainable: Callable[[str], bool] | None = None,
    learning_rate_groups: Mapping[str, float] = {},
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch, accumulating gradients over microbatches.

    batch: the task's fields, each with leading dimension G (global batch size).
    skip_nonfinite: drop the update (params and optimizer state unchanged) when the loss
    or the gradients are not finite.
    trainable: which parameters train (by path; None: all). Gradients, their norm and the
    update cover those only (`tx` and the optimizer state see just them); the others stay
    as they are.
    Returns the new state and scalar metrics: the task's, grad_norm, learning_rate,
    learning_rate_<name> per entry of `learning_rate_groups` (learning_rate times its
    multiplier), nonfinite (1.0 when this step's loss or gradients were not finite),
    skipped_steps.
    """
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    norm = task.normalizers(batch)
    trained, frozen = optim.split(state.params, trainable)

    def grads_and_metrics(microbatch: Batch, dropout_rng: jax.Array):
        def loss_fn(params):
            out = model.apply(
                {"params": optim.merge(params, frozen)}, **task.model_inputs(microbatch), deterministic=False,
                rngs={"dropout": dropout_rng},
            )
            return task.loss_and_metrics(out, microbatch, norm)

        (_, step_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
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

    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(step_metrics["loss"]) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, trained)
    params = optax.apply_updates(trained, updates)
    skipped = state.skipped
    if skip_nonfinite:
        keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
        params, opt_state = keep(params, trained), keep(opt_state, state.opt_state)
        skipped = skipped + (~finite).astype(jnp.int32)
    learning_rate = schedule(state.step)
    step_metrics = {
        **step_metrics,
        "grad_norm": grad_norm,
        "learning_rate": learning_rate,
        **{f"learning_rate_{name}": learning_rate * scale for name, scale in learning_rate_groups.items()},
        "nonfinite": (~finite).astype(jnp.float32),
        "skipped_steps": skipped.astype(jnp.float32),
    }
    new_state = state.replace(step=state.step + 1, params=optim.merge(params, frozen), opt_state=opt_state,
                              skipped=skipped)
    return new_state, step_metrics


def eval_step(params: Any, batch: Batch, *, model: nn.Module, task: Task) -> dict[str, jax.Array]:
    """What the task's evaluation needs from one batch (`Task.eval_outputs`), dropout off."""
    out = model.apply({"params": params}, **task.model_inputs(batch), deterministic=True)
    return task.eval_outputs(out, batch)


# ----------------------------------------------------------------------------- state


def _init_boxed(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, seq_len: int,
                trainable: Callable[[str], bool] | None) -> TrainState:
    params = init_params(model, rng, seq_len)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(optim.split(params, trainable)[0]), skipped=jnp.zeros((), jnp.int32))


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, rules: tuple,
                   rng: jax.Array, seq_len: int,
                   trainable: Callable[[str], bool] | None = None) -> tuple[TrainState, TrainState]:
    """(shardings, abstract state): where every leaf of the train state lives, from
    abstract shapes and the model's logical axis names; nothing is allocated. The
    optimizer state covers the `trainable` parameters only (by path; None: all)."""
    abstract = jax.eval_shape(functools.partial(_init_boxed, model, tx, seq_len=seq_len, trainable=trainable), rng)
    return sharding.logical_shardings(abstract, mesh, rules), nn.meta.unbox(abstract)


def init_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, seq_len: int,
                     shardings: TrainState, params: Any = None,
                     trainable: Callable[[str], bool] | None = None) -> TrainState:
    """A fresh train state created directly into `shardings` (never whole on one device);
    with `params` (from init_from), those parameters placed there instead of random ones.
    The optimizer state covers the `trainable` parameters only (as in `abstract_state`)."""
    if params is None:
        init = functools.partial(_init_boxed, model, tx, seq_len=seq_len, trainable=trainable)
        return jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
    params = jax.device_put(params, shardings.params)
    opt_state = jax.jit(lambda p: tx.init(optim.split(p, trainable)[0]), out_shardings=shardings.opt_state)(params)
    step, skipped = (jax.device_put(np.zeros((), np.int32), shardings.step) for _ in range(2))
    return TrainState(step=step, params=params, opt_state=opt_state, skipped=skipped)


def jit_train_step(config: ml_collections.ConfigDict, model: nn.Module, tx: optax.GradientTransformation,
                   task: Task, state_shardings: TrainState, batch_sharding: jax.sharding.Sharding,
                   trainable: Callable[[str], bool] | None = None, learning_rate_groups: Mapping[str, float] = {}):
    """`train_step` for this config, jitted with explicit shardings and the state donated."""
    step = functools.partial(
        train_step, model=model, tx=tx, task=task, schedule=optim.learning_rate_schedule(config), seed=config.seed,
        grad_accum_steps=config.grad_accum_steps, skip_nonfinite=config.on_nonfinite == "skip", trainable=trainable,
        learning_rate_groups=learning_rate_groups,
    )
    return jax.jit(step, in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
                   donate_argnums=0)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `abstract` placed as `shardings` say (a restore target)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


# ----------------------------------------------------------------------------- loop


def train(run: Run) -> dict[str, float]:
    """Trains `run` in its workdir, resuming from the newest checkpoint there.

    Returns the last logged metrics ({} when the workdir had already finished). Raises
    InputError on a checkpoint that does not fit the run, NonFiniteLoss when the loss goes
    NaN/Inf under on_nonfinite="abort", checkpoint.SaveFailed when a checkpoint cannot be
    written. Nothing but the log file (report.log_file) is written before the restore
    (or init_from) has succeeded.
    """
    config, workdir = run.config, run.workdir
    ckpt = _checkpointer(config, workdir) if kind_of(workdir) is PathKind.WORKDIR else None
    latest = ckpt.latest_step() if ckpt is not None else None
    if latest is not None:
        _tell_what_changed(ckpt, latest, run)
    if latest is not None and latest >= config.num_train_steps:
        print(f"{workdir}: already trained to step {latest} of {config.num_train_steps}; nothing to do")
        run.train_loader.close()
        ckpt.close()
        return {}
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with report.logs_to_file(report.log_file(workdir, jax.process_index())):
            with sharding.activated(run.mesh, run.rules):
                return _train(run, ckpt)
    finally:
        run.train_loader.close()


def _tell_what_changed(ckpt: checkpoint.TrainCheckpointer, step: int, run: Run) -> None:
    """Before resuming (or finding nothing to do): InputError when the newest checkpoint
    was written for another model; one line naming the other config keys that changed,
    and one more when a changed num_train_steps changes the learning-rate schedule."""
    ckpt.check_model(step, run.model)
    saved = ckpt.saved_config(step)
    if jax.process_index() != 0:
        return
    changes = report.config_changes(saved, run.config.to_dict())
    if changes:
        print(f"{ckpt.root / str(step)} was written with another config: {changes}")
    before = saved.get("num_train_steps")
    if before != run.config.num_train_steps and step < run.config.num_train_steps:
        print(f"num_train_steps {before} -> {run.config.num_train_steps}: the learning-rate schedule now runs "
              f"to step {run.config.num_train_steps}, so the rates from step {step} on differ from the first run's")


def _checkpointer(config: ml_collections.ConfigDict, workdir: Path) -> checkpoint.TrainCheckpointer:
    return checkpoint.TrainCheckpointer(workdir, config.checkpoint.keep, config.checkpoint.keep_every_steps)


def _write_workdir(run: Run) -> None:
    """The run's own files: config.json and what the setup asks for (process 0)."""
    run.workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        if run.write_files is not None:
            run.write_files(run.workdir)
        report.write_config(run.workdir, run.config.to_dict())
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("workdir written")


def _train(run: Run, ckpt: checkpoint.TrainCheckpointer | None) -> dict[str, float]:
    config, model = run.config, run.model
    is_writer = jax.process_index() == 0
    rng = jax.random.key(config.seed)
    state_shardings, abstract = abstract_state(model, run.tx, run.mesh, run.rules, rng, config.seq_len, run.trainable)
    restored = None
    if ckpt is not None:
        restored = ckpt.restore_latest(with_shardings(abstract, state_shardings), model, config.checkpoint.fallback)
    if restored is None:
        params = run.init_params() if run.init_params is not None else None
        _write_workdir(run)
        state = init_train_state(model, run.tx, rng, config.seq_len, state_shardings, params, run.trainable)
        start = 0
    else:
        _write_workdir(run)
        state, data_state, start = restored
        run.train_loader.restore(data_state)
        if is_writer:
            print(f"resumed from step {start}")
    ckpt = ckpt or _checkpointer(config, run.workdir)
    if is_writer:  # what an interrupted run logged past its newest checkpoint is logged again
        report.truncate_metrics(run.workdir, start)

    batch_sharding = sharding.batch_sharding(run.mesh)
    step_fn = jit_train_step(config, model, run.tx, run.task, state_shardings, batch_sharding, run.trainable,
                             run.learning_rate_groups)
    eval_fn = jax.jit(functools.partial(eval_step, model=model, task=run.task),
                      in_shardings=(state_shardings.params, batch_sharding))
    to_global = functools.partial(_to_global, batch_sharding=batch_sharding)
    t0 = time.monotonic()
    first_batch = to_global(run.train_loader.get_batch(start))  # every step's shape (one per run)
    step_fn = step_fn.lower(state, first_batch).compile()
    if is_writer:
        total, trains = _count(abstract.params), _count(optim.split(abstract.params, run.trainable)[0])
        print(f"{type(model).__name__}: {trains:,} of {total:,} parameters train ({trains / total:.1%}); "
              f"{sharding.describe(run.mesh, abstract, state_shardings)}")
        print(f"compute dtype {model.config.compute_dtype_line()}; attention {model.config.attention_line()}; "
              f"train step compiled in {time.monotonic() - t0:.1f}s")
    if jax.process_count() > 1:
        print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local devices, "
              f"loads {config.global_batch_size // jax.process_count()} of {config.global_batch_size} rows per batch")

    writer = report.MetricsWriter(run.workdir, active=is_writer, purge_step=start + 1)
    progress = report.ProgressBar(config.num_train_steps, active=is_writer)
    log = StepLogger(config, writer, progress, start, first_batch["input_ids"].size,
                     functools.partial(summarize, run.task))
    stop = False
    try:
        with Preemption() as preemption:
            for step in range(start, config.num_train_steps):
                state, step_metrics = step_fn(state, to_global(next(run.train_loader)))
                ckpt.check()  # a save that failed stops the run here, not at the next save
                done = step + 1
                log.dispatched(done, step_metrics)
                final = done == config.num_train_steps
                stop = preemption.stop_at(done)
                if done % config.checkpoint_every_steps == 0 or final or stop:  # written while evaluating
                    log.flush()  # in abort mode, never save a state whose loss is not finite
                    ckpt.save(done, state, model, _all_processes(run.train_loader.state()), config.to_dict())
                if done % config.eval_every_steps == 0 or final:
                    log.flush()
                    evaluation, outputs = run.evaluation, []
                    for i in range(evaluation.num_batches):
                        progress.evaluating(i, evaluation.num_batches)
                        outputs.append(_fetch(eval_fn(state.params, to_global(evaluation.batch(i)))))
                    eval_scalars = evaluation.score(outputs)
                    writer.write(done, eval_scalars)
                    progress.message(f"eval step {done}: " + "  ".join(f"{k} {v:.4f}" for k, v in eval_scalars.items()))
                    log.last.update(eval_scalars)
                    log.restart_clock(done)
                if stop:
                    ckpt.wait()
                    why = "interrupted" if preemption.interrupted else "preempted"
                    progress.message(f"{why}: stopped at step {done}; checkpoint saved in {ckpt.root / str(done)}")
                    break
        plot = report.plot_losses(run.workdir) if not stop and is_writer else None  # while the last save writes
        ckpt.wait()
    finally:
        ckpt.wait(check=False)
        writer.close()
    if not stop and is_writer:
        print(f"done: step {config.num_train_steps}; checkpoints in {ckpt.root}; plot {plot}")
    # Closed only after success: closing after a failed restore makes Orbax's background
    # threads print tracebacks over the one-line error.
    ckpt.close()
    if stop and preemption.interrupted:
        raise Interrupted(f"stopped at step {done} after Ctrl-C; the same command resumes from there")
    return log.last


class StepLogger:
    """Reads each step's metrics one step late (after the next step is dispatched), checks
    they are finite, and logs the steps due (every log_every_steps, the first and the
    last) with the training throughput: tokens_per_sec counts the positions of the
    batches' shape (rows x row length: padding included, packed rows as they are, so
    a packed step counts the positions it computes, not its examples at seq_len)."""

    def __init__(self, config, writer, progress, start: int, tokens_per_step: int,
                 summarize=lambda metrics: metrics):
        self.config, self.writer, self.progress, self.summarize = config, writer, progress, summarize
        self.tokens_per_step = tokens_per_step
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
        scalars = self.summarize(scalars)
        scalars["tokens_per_sec"] = self.tokens_per_step * (step - self.clock_step) / max(now - self.clock_time, 1e-9)
        self.restart_clock(step)
        self.writer.write(step, scalars)
        self.progress.update(step, scalars["loss"], scalars["tokens_per_sec"])
        self.last = scalars


def _to_global(batch: HostBatch, batch_sharding: jax.sharding.Sharding) -> Batch:
    """This host's rows -> one global jax.Array per field, split over the batch axes."""
    return {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in batch.items()}


def _all_processes(data_state: dict) -> dict:
    """The loaders' states of every process merged into one (what process 0 saves): the
    same keys must hold the same values, but for dicts, which are merged (each process
    knows the positions of its own data streams)."""
    if jax.process_count() == 1:
        return data_state
    encoded = np.frombuffer(json.dumps(data_state).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([len(encoded)]))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:len(encoded)] = encoded
    gathered = multihost_utils.process_allgather(padded)
    merged = {}
    for process, (row, length) in enumerate(zip(gathered, lengths.ravel().tolist())):
        for key, value in json.loads(row[:length].tobytes()).items():
            if isinstance(value, dict):
                merged[key] = {**merged.get(key, {}), **value}
            elif merged.setdefault(key, value) != value:
                raise InputError(f"the processes' data loaders disagree: process 0 has {key}={merged[key]!r}, "
                                 f"process {process} {value!r} (do all hosts see the same corpus files?)")
    return merged


def _fetch(tree):
    """Device outputs -> numpy on every process (batch-split arrays gathered whole)."""
    return multihost_utils.process_allgather(tree, tiled=True)


def _count(params) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
