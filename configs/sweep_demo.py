"""A small sweep on the offline demo classification task: 2 learning rates x 2 seeds from
one checkpoint, the recipe of configs/finetune_classification.py otherwise.

    python -m flaxft.tasks.demo_data runs/finetune_data     # the offline demo tasks
    python -m flaxft.sweep --config configs/sweep_demo.py:CHECKPOINT --workdir runs/sweep_demo

CHECKPOINT: a Hugging Face folder or a flaxft checkpoint/workdir (e.g. all-MiniLM-L6-v2's
folder, as in the README's fine-tuning section). See flaxft/sweep.py for the keys.
"""

DATA = "runs/finetune_data/classification"


def get_config(init_from: str = ""):
    if not init_from:
        raise ValueError("name the checkpoint to fine-tune: --config configs/sweep_demo.py:CHECKPOINT")
    return {
        "base": "configs/finetune_classification.py",
        "overrides": {"init_from": init_from, "checkpoint.keep": 1},
        "tasks": {
            "topics": {"task.train_file": f"{DATA}/train.csv", "task.validation_file": f"{DATA}/validation.csv",
                       "task.text_fields": "text", "task.label_field": "label"},
        },
        "grid": {"learning_rate": [5e-5, 1e-4], "seed": [0, 1]},
    }
