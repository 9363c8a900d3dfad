"""Tiny pretraining runs shared by the training, sharding and resume tests."""

import json
from pathlib import Path

from flaxft import config as config_lib
from flaxft import report
from flaxft.data import default_corpus


def write_corpus(folder: Path, documents: int = 400) -> Path:
    """The first `documents` documents of the offline corpus (real prose) as JSONL."""
    path = Path(folder) / "docs.jsonl"
    with open(path, "w") as f:
        for doc in default_corpus()[:documents]:
            f.write(json.dumps({"text": doc}) + "\n")
    return path


def tiny_config(corpus: Path, **overrides):
    """A 2-layer, 32-wide BERT on `corpus`; `overrides` are dotted keys, e.g. **{"mesh.fsdp": 8}."""
    config = config_lib.default_config()
    config.update(
        num_train_steps=30, global_batch_size=8, seq_len=32, learning_rate=5e-3, warmup_steps=5,
        log_every_steps=5, eval_every_steps=15, eval_batches=2, checkpoint_every_steps=15,
    )
    config.data.update(path=str(corpus), max_predictions_per_seq=5, eval_fraction=0.05)
    config.model.update(vocab_size=600, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    return set_dotted(config, overrides)


def set_dotted(config, values: dict):
    """Sets dotted keys ("model.hidden_size") of `config` to `values`; returns config."""
    for key, value in values.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def losses(workdir) -> list[float]:
    """The training losses a run logged, in step order."""
    return [r["loss"] for r in report.read_metrics(workdir) if "loss" in r]


def tiny_flags(corpus: Path, **overrides) -> list[str]:
    """`tiny_config` as flaxft.main flags over configs/pretrain_tiny.py."""
    config = tiny_config(corpus, **overrides)
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if hasattr(value, "items"):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(config, "")
    return ["--config", "configs/pretrain_tiny.py", *(f"--config.{k}={v}" for k, v in flat.items()
                                                      if not k.startswith("mesh.rules") and v is not None)]
