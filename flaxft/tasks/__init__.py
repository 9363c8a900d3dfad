"""Tasks: what a model is trained to do. Each is a `flaxft.contracts.Task` (model inputs, loss
and metrics, evaluation outputs, on device); fine-tuning tasks also build their data and
score predictions (`flaxft.tasks.task.FinetuneTask`). `FINETUNE_TASKS` names them as
config.task.name does; a new task is a new module and one entry here."""

from flaxft.tasks.classification import Classification
from flaxft.tasks.ner import NER
from flaxft.tasks.pretraining import Pretraining
from flaxft.tasks.qa import QA
from flaxft.tasks.replaced_token_detection import ReplacedTokenDetection
from flaxft.tasks.task import FinetuneTask, TaskData, from_config

FINETUNE_TASKS: dict[str, type] = {"classification": Classification, "ner": NER, "qa": QA}

__all__ = ["FINETUNE_TASKS", "NER", "QA", "Classification", "FinetuneTask", "Pretraining", "ReplacedTokenDetection",
           "TaskData", "from_config"]
