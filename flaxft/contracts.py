"""What the training loop runs: a `Run`, and the contracts of its parts.

A setup (`flaxft.pretrain`, `flaxft.finetune`) builds a Run from a config: a model, a
`Task` (what the model is trained to do, on device), a training `Loader`, an `Evaluation`
and the optimizer and mesh. `flaxft.loop` trains any Run; it knows these contracts and
nothing of tasks, data or model families.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

Batch = dict[str, jax.Array]  # a global batch on the mesh: every field [G, ...], input_ids [G, L]
HostBatch = dict[str, np.ndarray]  # this host's rows of it: every field [G / processes, ...]


class Task(Protocol):
    """What a model is trained to do, as pure functions of device arrays (traced inside the
    jitted steps). `out` is the model's `flaxft.models.EncoderOutput`."""

    def model_inputs(self, batch: Batch) -> Batch:
        """The batch fields the model is called with, as keyword arguments."""

    def normalizers(self, batch: Batch) -> dict[str, jax.Array]:
        """Whole-batch denominators, computed once per step: `loss_and_metrics` divides by
        them, so the terms of several microbatches add up to the whole batch's value."""

    def loss_and_metrics(self, out: Any, batch: Batch, norm: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
        """The loss to minimise and scalar metrics (one of them "loss"), each this batch's
        share of the whole-batch value."""

    def eval_outputs(self, out: Any, batch: Batch) -> dict[str, jax.Array]:
        """What an evaluation step hands to `Evaluation.score` for one batch."""

    # Optional: `summarize(metrics: dict[str, float]) -> dict[str, float]`, on the host:
    # metrics derived from the logged whole-batch ones (ratios of totals), see `summarize`.


def summarize(task: Task, metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` as the task reports them: through its `summarize` if it has one."""
    return task.summarize(metrics) if hasattr(task, "summarize") else metrics


class Loader(Protocol):
    """This host's training batches, a pure function of the step, checkpointable."""

    def get_batch(self, step: int) -> HostBatch:
        """This host's rows of global step `step`; every step's batch has the same shapes
        (G rows, or for packed batches the run's row count)."""

    def __next__(self) -> HostBatch:
        """The next step's batch."""

    def state(self) -> dict:
        """The position to save in a checkpoint (JSON-ready). With several processes the
        loop merges theirs: equal values, and the union of dicts (a process's own part)."""

    def restore(self, state: dict) -> None:
        """Continues from a saved position (the merged one); InputError if it belongs to
        other data."""

    def close(self) -> None:
        """Stops background work."""


class Evaluation(Protocol):
    """How a run is evaluated: `num_batches` batches, each run through the eval step
    (`Task.eval_outputs`, gathered to every host), then scored on the host."""

    num_batches: int

    def batch(self, index: int) -> HostBatch:
        """This host's rows of evaluation batch `index`."""

    def score(self, outputs: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
        """Metrics ("eval_"-prefixed) from the gathered outputs of every batch, in order.
        Process 0 may write result files into the workdir."""


@dataclasses.dataclass
class Run:
    """Everything a training run needs, built and checked by a setup before the workdir is
    touched.

    config: the resolved config (num_train_steps set); config.json records it.
    init_params: parameters to start from (init_from), read only when the run starts
        afresh; None for a random init.
    write_files: writes the run's own files into the workdir (its tokenizer; process 0,
        once, before training starts).
    trainable: whether the parameter at a "/"-joined path trains (`flaxft.optim.trainable`);
        the others are held fixed, with no gradient and no optimizer state (`tx` sees the
        trainable ones only). None: every parameter trains.
    learning_rate_groups: parameters whose learning rate is `learning_rate` times a
        multiplier (layer-wise decay's embeddings), by name; the train step logs each as
        `learning_rate_<name>`.
    """

    config: ml_collections.ConfigDict
    workdir: Path
    task: Task
    model: nn.Module
    tx: optax.GradientTransformation
    mesh: jax.sharding.Mesh
    rules: tuple
    train_loader: Loader
    evaluation: Evaluation
    init_params: Callable[[], Any] | None = None
    write_files: Callable[[Path], None] | None = None
    trainable: Callable[[str], bool] | None = None
    learning_rate_groups: Mapping[str, float] = dataclasses.field(default_factory=dict)
