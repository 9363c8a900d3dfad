"""GLUE: the nine tasks from one checkpoint, BERT's recipe (Devlin et al. 2019: batch 32,
3 epochs, learning rate 2e-5 / 3e-5 / 5e-5, warmup 10% of the steps, 128 tokens), three seeds.

    python -m flaxft.sweep --config configs/sweep_glue.py:CHECKPOINT --workdir runs/glue

CHECKPOINT: a Hugging Face folder or a flaxft checkpoint/workdir (the model to evaluate).
The datasets are Hugging Face's `nyu-mll/glue` configs, read through `task.dataset`
("glue:cola", ...): offline only from the Hugging Face cache, so fetch them once with
HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 before the command; a missing one exits 2 naming it before
any run starts. Each task reports GLUE's metrics on its validation split (MNLI:
validation_matched): CoLA Matthews correlation; STS-B (regression) Pearson, Spearman and
their mean; MRPC and QQP accuracy, F1 and their mean (`combined_score`, which ranks the
settings); the others accuracy. 9 tasks x 9 settings = 81 runs; each keeps its last
checkpoint only (about 1.3 GB each for BERT-Base with its optimizer state).
"""

# Text columns of each task in `nyu-mll/glue`, and warmup: ~10% of 3 epochs at batch 32
# (training rows: cola 8,551, sst2 67,349, mrpc 3,668, qqp 363,846, stsb 5,749,
# mnli 392,702, qnli 104,743, rte 2,490, wnli 635).
TASKS = {
    "cola": ("sentence", 80),
    "sst2": ("sentence", 631),
    "mrpc": ("sentence1,sentence2", 34),
    "qqp": ("question1,question2", 3411),
    "stsb": ("sentence1,sentence2", 54),
    "mnli": ("premise,hypothesis", 3682),
    "qnli": ("question,sentence", 982),
    "rte": ("sentence1,sentence2", 23),
    "wnli": ("sentence1,sentence2", 6),
}


def get_config(init_from: str = ""):
    if not init_from:
        raise ValueError("name the checkpoint to fine-tune: --config configs/sweep_glue.py:CHECKPOINT")
    return {
        "base": "configs/finetune_classification.py",
        "overrides": {
            "init_from": init_from,
            "task.train_file": "",  # the base file's demo files give way to the datasets
            "task.validation_file": "",
            "task.label_field": "label",
            "task.epochs": 3.0,
            "global_batch_size": 32,
            "seq_len": 128,
            "eval_every_steps": 1_000_000,  # evaluate the whole validation split once, at the end
            "checkpoint_every_steps": 1000,
            "checkpoint.keep": 1,
        },
        "tasks": {
            task: {"task.dataset": f"glue:{task}", "task.text_fields": fields, "warmup_steps": warmup}
            for task, (fields, warmup) in TASKS.items()
        },
        "grid": {"learning_rate": [2e-5, 3e-5, 5e-5], "seed": [0, 1, 2]},
    }
