"""Sequence classification (single texts or pairs; string, integer or float labels) from a
pretrained checkpoint: the common BERT recipe (3 epochs, lr 5e-5, batch 32, linear warmup
and decay, seq_len 64 here).

    python -m flaxft.tasks.demo_data runs/finetune_data     # offline demo data
    python -m flaxft.main --config configs/finetune_classification.py --workdir runs/cls \
        --config.init_from=PATH_TO_HF_FOLDER_OR_FLAXFT_WORKDIR

Own data: --config.task.train_file=train.csv --config.task.validation_file=dev.csv
--config.task.text_fields=sentence1,sentence2 --config.task.label_field=label; or a Hugging
Face dataset: --config.task.dataset=glue:mrpc (GLUE metrics for GLUE tasks).
"""

from flaxft.config import default_config


def get_config():
    config = default_config()
    config.task.name = "classification"
    config.task.train_file = "runs/finetune_data/classification/train.csv"
    config.task.validation_file = "runs/finetune_data/classification/validation.csv"
    config.task.text_fields = "text"
    config.task.epochs = 3.0  # passes over the training rows (or --config.num_train_steps=N instead)
    config.global_batch_size = 32
    config.seq_len = 64
    config.learning_rate = 5e-5
    config.warmup_steps = 0
    config.warmup_ratio = 0.1  # warmup over the first 10% of the steps (--config.warmup_steps=N instead)
    config.model.dtype = "auto"  # bfloat16 where the backend multiplies it natively (README, Mixed precision)
    config.weight_decay = 0.01
    config.log_every_steps = 10
    config.eval_every_steps = 1000  # and at the end
    config.checkpoint_every_steps = 1000  # and at the end
    return config
