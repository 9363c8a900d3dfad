"""The contract of a fine-tuning task, beyond the device side every task has
(`flaxft.contracts.Task`): which head it needs, how it turns data into features, how it scores
a model's outputs, and which config.task keys it reads."""

import dataclasses
from typing import Any, ClassVar, Protocol

import ml_collections
import numpy as np
from tokenizers import Tokenizer

from flaxft.contracts import Task
from flaxft.data.features import Features


@dataclasses.dataclass
class TaskData:
    """What a task's `build` returns: the features of both splits and the model's head size.

    id2label: class names in id order (empty for regression and QA), for the model config.
    """

    train: Features
    validation: Features | None
    num_labels: int
    id2label: tuple[str, ...] = ()


class FinetuneTask(Task, Protocol):
    """A fine-tuning task: a frozen dataclass whose fields are the config.task keys it
    reads (`from_config` fills them), plus the device side of `flaxft.contracts.Task`."""

    head: ClassVar[str]  # the head role it trains (flaxft.models.HEAD_ROLES)

    def build(self, tokenizer: Tokenizer, seq_len: int, *, train_file: str, validation_file: str,
              dataset: str) -> TaskData:
        """Reads both splits (files or a dataset) and makes their features."""

    def evaluate(self, outputs: dict[str, np.ndarray], features: Features) -> tuple[dict[str, float], list[Any]]:
        """(metrics, per-example predictions) from the model's outputs on the whole split."""


def from_config(task_class: type, task_config: ml_collections.ConfigDict) -> Any:
    """`task_class` with each field read from the config.task key of the same name."""
    return task_class(**{f.name: task_config[f.name] for f in dataclasses.fields(task_class)})
