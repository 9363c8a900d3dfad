"""Tiny pretraining runs shared by the training, sharding, resume and operation tests:
configs, and the CLI in real subprocesses."""

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def tiny_electra_config(corpus: Path, **overrides):
    """`tiny_config`'s run for ELECTRA pretraining: a 2-layer, 32-wide discriminator with
    16-wide embeddings and a generator half as wide, on full sentences (no NSP)."""
    config = tiny_config(corpus)
    config.data.format = "roberta"
    config.model = config_lib.model_defaults("electra")
    config.model.update(vocab_size=600, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, generator_size=0.5)
    return set_dotted(config, overrides)


def tiny_modernbert_config(corpus: Path, **overrides):
    """`tiny_config`'s run for ModernBERT pretraining: 3 layers 32 wide (global attention,
    then two sliding-window layers that see 4 tokens on either side), on full sentences
    packed (no NSP) with 30% masking and ModernBERT's optimizer (StableAdamW, decoupled
    weight decay, no clipping), with the byte-level BPE the run trains on the corpus
    (<s>=0, <pad>=1, </s>=2). Rotary positions only: fine-tuning may use rows of up to
    max_position_embeddings (128) tokens."""
    config = tiny_config(corpus)
    config.update(optimizer="stable_adamw", decoupled_weight_decay=True, weight_decay=1e-5, adam_b2=0.98,
                  grad_clip_norm=0.0)
    config.data.update(format="roberta", mask_rate=0.3, max_predictions_per_seq=10)
    config.model = config_lib.model_defaults("modernbert")
    config.model.update(vocab_size=600, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=128, local_attention=8, pad_token_id=1,
                        bos_token_id=0, cls_token_id=0, eos_token_id=2, sep_token_id=2)
    return set_dotted(config, overrides)


def tiny_flags(corpus: Path, **overrides) -> list[str]:
    """`tiny_config` as flaxft.main flags over configs/pretrain_tiny.py."""
    return config_flags(tiny_config(corpus, **overrides), "configs/pretrain_tiny.py")


def config_flags(config, config_file: str) -> list[str]:
    """flaxft.main flags that turn `config_file` (whose model family is config's) into `config`."""
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if hasattr(value, "items"):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(config, "")
    return ["--config", config_file, *(f"--config.{k}={v}" for k, v in flat.items()
                                       if not k.startswith("mesh.rules") and v is not None)]


REPO = Path(__file__).resolve().parents[1]
RUN = dict(num_train_steps=16, log_every_steps=1, eval_every_steps=16, checkpoint_every_steps=4)


def main_command(corpus, workdir, **overrides) -> list[str]:
    return [sys.executable, "-m", "flaxft.main", *tiny_flags(corpus, **{**RUN, **overrides}), "--workdir", str(workdir)]


def run_main(corpus, workdir, **overrides) -> subprocess.CompletedProcess:
    return subprocess.run(main_command(corpus, workdir, **overrides), cwd=REPO, capture_output=True, text=True)


def start_main(corpus, workdir, **overrides) -> subprocess.Popen:
    return subprocess.Popen(main_command(corpus, workdir, **overrides), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, process, timeout=300.0, poll=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert process.poll() is None, f"run ended first: {process.stdout.read()[-2000:]}"
        time.sleep(poll)
    raise AssertionError("timed out")


def logged_step(workdir) -> int:
    records = report.read_metrics(workdir)
    return max((r["step"] for r in records), default=0)


def steps_on_disk(workdir) -> list[int]:
    folder = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str, read_only: bool = False):
    """A real, small tmpfs mounted at `mountpoint` for the block (skips where this
    machine does not let the tests mount one)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def single_device_run(config_factory: str, corpus: Path, steps: dict, workdir: Path) -> tuple[list[float], str]:
    """Runs `tests.tiny.<config_factory>(corpus, **steps)` in a process that has a single
    CPU device (the reference of the mesh-layout tests); its losses and its stdout."""
    script = (
        f"from pathlib import Path; from flaxft import train; from tests.tiny import {config_factory}; "
        f"train.run({config_factory}(Path({str(corpus)!r}), **{steps!r}), {str(workdir)!r})"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return losses(workdir), result.stdout


def assert_resumes_bit_identically(config, workdir: Path, copy: Path, from_step_removed: int) -> None:
    """Reruns `config` on a copy of the finished `workdir` without its checkpoint
    `from_step_removed` (so it resumes from the one before): the final parameters and every
    logged loss equal the uninterrupted run's, bit for bit."""
    import shutil

    import numpy as np
    from flax import traverse_util

    from flaxft import checkpoint, train

    shutil.copytree(workdir, copy)
    shutil.rmtree(copy / "checkpoints" / str(from_step_removed))
    train.run(config, str(copy))
    final, resumed = (traverse_util.flatten_dict(checkpoint.load_model(w)[1], sep="/") for w in (workdir, copy))
    for path, value in final.items():
        np.testing.assert_array_equal(resumed[path], value, err_msg=path)
    assert losses(copy) == losses(workdir)
