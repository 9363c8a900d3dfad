"""A small sweep on two offline classification tasks (the demo task and `topics`): 2
learning rates x 2 seeds each from one checkpoint, the recipe of
configs/finetune_classification.py otherwise.

    python -m flaxft.tasks.demo_data runs/finetune_data --tasks classification,topics
    python -m flaxft.sweep --config configs/sweep_demo.py:CHECKPOINT --workdir runs/sweep_demo

CHECKPOINT: a Hugging Face folder or a flaxft checkpoint/workdir (e.g. all-MiniLM-L6-v2's
folder, as in the README's fine-tuning section). See flaxft/sweep.py for the keys.
"""

DATA = "runs/finetune_data"


def get_config(init_from: str = ""):
    if not init_from:
        raise ValueError("name the checkpoint to fine-tune: --config configs/sweep_demo.py:CHECKPOINT")
    return {
        "base": "configs/finetune_classification.py",
        "overrides": {"init_from": init_from, "checkpoint.keep": 1},
        "tasks": {
            task: {"task.train_file": f"{DATA}/{task}/train.csv", "task.validation_file": f"{DATA}/{task}/validation.csv",
                   "task.text_fields": "text", "task.label_field": "label"}
            for task in ("classification", "topics")
        },
        "grid": {"learning_rate": [5e-5, 1e-4], "seed": [0, 1]},
    }
