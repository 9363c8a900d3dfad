"""Pretraining end to end: the loop in-process on tiny configs, the CLI in subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from flaxft import checkpoint, report, train
from flaxft.data import read_documents, train_wordpiece
from flaxft.errors import InputError
from tests.tiny import losses, tiny_config, write_corpus

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> tuple[Path, dict]:
    """One 30-step tiny pretraining run, shared: (workdir, the metrics train.run returned)."""
    workdir = tmp_path_factory.mktemp("trained")
    return workdir, train.run(tiny_config(corpus), str(workdir))


def test_training_writes_every_file_and_learns(trained):
    workdir, last = trained
    for name in ("config.json", "metrics.jsonl", "loss.png", "tokenizer/tokenizer.json"):
        assert (workdir / name).is_file(), name
    assert any((workdir / "tensorboard").iterdir())
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["15", "30"]
    records = report.read_metrics(workdir)
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 5, 10, 15, 20, 25, 30]
    for key in ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "learning_rate", "grad_norm", "tokens_per_sec"):
        assert all(key in r for r in train_records), key
    assert [r["step"] for r in records if "eval_loss" in r] == [15, 30]
    assert {"eval_mlm_accuracy", "eval_nsp_accuracy"} <= set(last)
    first, final = train_records[0]["loss"], train_records[-1]["loss"]
    assert final < first - 0.5, (first, final)
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["num_train_steps"] == 30 and saved["model"]["hidden_size"] == 32


def test_a_finished_workdir_has_nothing_to_do(trained, corpus, capsys):
    workdir, _ = trained
    before = (workdir / "metrics.jsonl").read_text()
    assert train.run(tiny_config(corpus), str(workdir)) == {}
    assert "already trained to step 30" in capsys.readouterr().out
    assert (workdir / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_the_same_config_gives_the_same_losses(trained, corpus, tmp_path):
    train.run(tiny_config(corpus), str(tmp_path))
    assert losses(tmp_path) == losses(trained[0])


@pytest.mark.slow
def test_gradient_accumulation_gives_the_same_steps(tmp_path, corpus):
    common = dict(num_train_steps=6, log_every_steps=1, global_batch_size=32, eval_every_steps=6, checkpoint_every_steps=6,
                  **{"model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0})
    train.run(tiny_config(corpus, **common), str(tmp_path / "one"))
    train.run(tiny_config(corpus, grad_accum_steps=4, **common), str(tmp_path / "four"))
    one, four = losses(tmp_path / "one"), losses(tmp_path / "four")
    assert len(one) == 6
    assert max(abs(a - b) / a for a, b in zip(one, four)) < 1e-5, (one, four)


@pytest.mark.slow
def test_roberta_format_trains_masked_lm_only(tmp_path, corpus):
    last = train.run(tiny_config(corpus, num_train_steps=10, eval_every_steps=10, **{"data.format": "roberta"}),
                     str(tmp_path))
    assert "eval_mlm_loss" in last and "eval_nsp_loss" not in last
    model, _ = checkpoint.load_model(tmp_path)
    assert type(model).__name__ == "BertForMaskedLM"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seq_len": 100}, "config.seq_len (100) is above what config.model.max_position_embeddings (64) allows (64)"),
        ({"global_batch_size": 6}, "config.global_batch_size (6) does not divide"),
        ({"model.vocab_size": 555}, "has 600 tokens, more than config.model.vocab_size (555)"),
        ({"optimizer": "sgd"}, "config.optimizer"),
        ({"data.path": "/nonexistent/corpus.txt"}, "/nonexistent/corpus.txt"),
    ],
)
def test_bad_config_fails_before_writing(tmp_path, corpus, change, message):
    config = tiny_config(corpus, **change)
    if "model.vocab_size" in change:  # a real tokenizer of another size
        config.data.tokenizer = str(tmp_path / "tokenizer")
        train_wordpiece(read_documents(str(corpus)), 600, config.data.tokenizer)
    with pytest.raises(InputError) as info:
        train.run(config, str(tmp_path / "work"))
    assert message in str(info.value)
    assert not (tmp_path / "work").exists()


def run_main(*args, cwd=REPO):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "flaxft.main", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--config.num_train_stepz=3"], "num_train_stepz"),
        (["--config.model.hidden_sise=3"], "hidden_sise"),
        (["--config.data.path=/nowhere/at/all"], "/nowhere/at/all"),
        (["--config.seq_len=4096"], "max_position_embeddings"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args, needle):
    work = tmp_path / "work"
    result = run_main("--config", REPO / "configs/pretrain_tiny.py", "--workdir", work, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not work.exists()


@pytest.mark.slow
def test_empty_corpus_exits_2(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    result = run_main("--config", REPO / "configs/pretrain_tiny.py", "--workdir", tmp_path / "work",
                      f"--config.data.path={tmp_path / 'empty.txt'}")
    assert result.returncode == 2 and "empty.txt" in result.stderr, result.stderr
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path):
    """The demo's own command and config on the offline corpus, shortened."""
    work = tmp_path / "demo"
    result = run_main("--config", "configs/pretrain_tiny.py", "--workdir", work, "--config.num_train_steps=60",
                      "--config.eval_every_steps=30", "--config.checkpoint_every_steps=30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tokens/s" in result.stdout and "done: step 60" in result.stdout
    for name in ("config.json", "metrics.jsonl", "loss.png", "tokenizer/vocab.txt", "checkpoints/60"):
        assert (work / name).exists(), name
    assert losses(work)[-1] < losses(work)[0]
    again = run_main("--config", "configs/pretrain_tiny.py", "--workdir", work, "--config.num_train_steps=60")
    assert again.returncode == 0 and "already trained to step 60" in again.stdout


@pytest.mark.slow
def test_bfloat16_compute_tracks_the_float32_loss_curve(tmp_path, corpus):
    """model.dtype=bfloat16 computes in bfloat16 with float32 parameters, optimizer state
    and loss: over 200 tiny steps its losses stay within 3% of the float32 run's."""
    common = dict(num_train_steps=200, log_every_steps=20, eval_every_steps=200, checkpoint_every_steps=200,
                  warmup_steps=20)
    train.run(tiny_config(corpus, **common), str(tmp_path / "f32"))
    train.run(tiny_config(corpus, **common, **{"model.dtype": "bfloat16"}), str(tmp_path / "bf16"))
    f32, bf16 = losses(tmp_path / "f32"), losses(tmp_path / "bf16")
    assert len(f32) == len(bf16) == 11 and f32[-1] < f32[0] - 0.5, f32
    assert max(abs(a - b) / a for a, b in zip(f32, bf16)) < 0.03, (f32, bf16)
    _, params = checkpoint.load_model(tmp_path / "bf16")
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(params)} == {"float32"}
