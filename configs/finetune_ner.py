"""Token classification with BIO tags (CoNLL-style: pre-split words and tags), labels on
each word's first sub-word, entity-level precision/recall/F1 as seqeval computes them.

    python -m flaxft.main --config configs/finetune_ner.py --workdir runs/ner --config.init_from=PATH
Own data: --config.task.train_file=... --config.task.tokens_field=tokens --config.task.tags_field=ner_tags,
or --config.task.dataset=conll2003.
"""

from flaxft.config import default_config


def get_config():
    config = default_config()
    config.task.name = "ner"
    config.task.train_file = "runs/finetune_data/ner/train.jsonl"
    config.task.validation_file = "runs/finetune_data/ner/validation.jsonl"
    config.task.epochs = 3.0
    config.global_batch_size = 32
    config.seq_len = 64
    config.learning_rate = 5e-5
    config.warmup_steps = 20
    config.log_every_steps = 10
    config.eval_every_steps = 1000
    config.checkpoint_every_steps = 1000
    return config
