"""`python -m flaxft.convert` in real subprocesses: the round trip and every bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file, save_file

from tests.hf_models import CONFIGS, padded_batch, save_random_hf_model, torch_outputs


def convert(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "flaxft.convert", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd
    )


@pytest.mark.slow
def test_import_export_verify_round_trip(tmp_path, minilm_dir):
    ckpt, out = tmp_path / "ckpt", tmp_path / "hf_out"
    result = convert("import-hf", minilm_dir, ckpt)
    assert result.returncode == 0, result.stderr
    assert (ckpt / "checkpoints" / "0").is_dir() and (ckpt / "tokenizer" / "vocab.txt").is_file()

    result = convert("export-hf", ckpt, out)
    assert result.returncode == 0, result.stderr
    original, written = load_file(minilm_dir / "model.safetensors"), load_file(out / "model.safetensors")
    for key, tensor in written.items():
        assert tensor.tobytes() == original[key].tobytes(), key
    assert set(original) - set(written) == {"embeddings.position_ids"}
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer("Hello world")["input_ids"] == [101, 7592, 2088, 102]

    result = convert("verify", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "last_hidden_state" in result.stdout and "OK" in result.stdout
    assert "Loading weights" not in result.stdout + result.stderr  # no progress bars of transformers

    # MiniLM is a sentence-transformers model: the export keeps its pooling and normalization.
    assert {"modules.json", "1_Pooling", "config_sentence_transformers.json"} <= {p.name for p in out.iterdir()}
    from sentence_transformers import SentenceTransformer

    sentences = ["The quick brown fox jumps over the lazy dog.", "Checkpoints that resume exactly.", "Short."]
    original = SentenceTransformer(str(minilm_dir), device="cpu").encode(sentences)
    exported = SentenceTransformer(str(out), device="cpu").encode(sentences)
    np.testing.assert_allclose(exported, original, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(exported, axis=1), 1.0, atol=1e-5)
    modes = {p.relative_to(out): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert all(mode == (0o755 if path.is_dir() else 0o644) for path, mode in
               ((out / rel, m) for rel, m in modes.items())), modes


@pytest.mark.slow
def test_verify_fails_above_tolerance(tmp_path):
    save_random_hf_model(tmp_path, "BertForPreTraining", CONFIGS["gelu_h36"])
    result = convert("verify", tmp_path, "--tolerance", "0")
    assert result.returncode == 1 and "FAIL" in result.stdout, result.stdout + result.stderr


def _assert_bad_input(result, *needles):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def hf_folder(tmp_path):
    folder = tmp_path / "hf"
    save_random_hf_model(folder, "BertForMaskedLM", CONFIGS["gelu_h36"])
    return folder


def _rewrite_weights(folder, edit):
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


BAD_INPUTS = {
    "no_config": (lambda f: (f / "config.json").unlink(), ["config.json", "missing"]),
    "gpt2": (
        lambda f: (f / "config.json").write_text(json.dumps({**json.loads((f / "config.json").read_text()), "model_type": "gpt2"})),
        ["model_type 'gpt2'", "is not supported (flaxft reads ['bert', 'electra', 'modernbert', 'roberta', 'xlm-roberta'])"],
    ),
    "wrong_shape": (
        lambda f: _rewrite_weights(
            f, lambda s: s.update({"bert.encoder.layer.1.intermediate.dense.weight": np.zeros((36, 36), np.float32)})
        ),
        ["bert.encoder.layer.1.intermediate.dense.weight", "(36, 36)", "(37, 36)"],
    ),
    "missing_weight": (
        lambda f: _rewrite_weights(f, lambda s: s.pop("bert.encoder.layer.0.attention.self.key.bias")),
        ["missing weight", "bert.encoder.layer.0.attention.self.key.bias"],
    ),
    "no_weights": (lambda f: (f / "model.safetensors").unlink(), ["no model.safetensors"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_and_writes_nothing(tmp_path, hf_folder, case):
    spoil, needles = BAD_INPUTS[case]
    spoil(hf_folder)
    out = tmp_path / "ckpt"
    _assert_bad_input(convert("import-hf", hf_folder, out), *needles)
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["hf"]


@pytest.mark.slow
def test_existing_output_is_never_overwritten(tmp_path, hf_folder):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _assert_bad_input(convert("import-hf", hf_folder, out), str(out), "not empty")
    assert os.listdir(out) == ["keep.txt"]


@pytest.mark.slow
def test_missing_checkpoint_for_export(tmp_path):
    _assert_bad_input(convert("export-hf", tmp_path / "nowhere", tmp_path / "out"), "nowhere")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_exported_head_predicts_like_flaxft(tmp_path, hf_folder):
    """import-hf then export-hf of a masked LM: transformers on the export gives the original's logits."""
    assert convert("import-hf", hf_folder, tmp_path / "ckpt").returncode == 0
    assert convert("export-hf", tmp_path / "ckpt", tmp_path / "out").returncode == 0
    batch = padded_batch(CONFIGS["gelu_h36"])
    original = torch_outputs(transformers.BertForMaskedLM.from_pretrained(hf_folder).eval(), batch)
    exported = torch_outputs(transformers.BertForMaskedLM.from_pretrained(tmp_path / "out").eval(), batch)
    np.testing.assert_array_equal(exported["mlm_logits"], original["mlm_logits"])


@pytest.mark.slow
def test_verify_compares_a_modernbert_with_padded_rows_and_sliding_windows(tmp_path, capsys):
    """verify compares against transformers' reference (eager) attention: its default (sdpa)
    gives ModernBERT's padding positions other outputs than eager does (the real tokens'
    agree), which are no difference between the two models."""
    from flaxft import convert
    from tests.hf_models import FAMILY_CONFIGS

    save_random_hf_model(tmp_path, "ModernBertForMaskedLM", FAMILY_CONFIGS["modernbert"]["global2_window4_cls"])
    assert convert.main(["verify", str(tmp_path), "--tolerance", "1e-5"]) == 0, capsys.readouterr().out
