"""Extractive QA, SQuAD layout: contexts longer than seq_len are cut into windows that
overlap by doc_stride tokens; spans are picked from the n best start/end pairs and mapped
back to characters; exact match and F1 as SQuAD scores them.

    python -m flaxft.main --config configs/finetune_qa.py --workdir runs/qa --config.init_from=PATH
Own data: --config.task.train_file=train.json (SQuAD JSON or JSONL), or --config.task.dataset=squad.
"""

from flaxft.config import default_config


def get_config():
    config = default_config()
    config.task.name = "qa"
    config.task.train_file = "runs/finetune_data/qa/train.jsonl"
    config.task.validation_file = "runs/finetune_data/qa/validation.jsonl"
    config.task.epochs = 2.0
    config.task.doc_stride = 32
    config.global_batch_size = 32
    config.seq_len = 128
    config.learning_rate = 5e-5
    config.warmup_steps = 20
    config.log_every_steps = 10
    config.eval_every_steps = 1000
    config.checkpoint_every_steps = 1000
    return config
