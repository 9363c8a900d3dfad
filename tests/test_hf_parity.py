"""flaxft against transformers (PyTorch) itself: outputs, round trips, the real MiniLM."""

import json

import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file

from flaxft import hf
from flaxft.models import FAMILIES, restack
from tests.hf_models import CONFIGS, FAMILY_CONFIGS, padded_batch, save_random_hf_model, torch_outputs

ARCHITECTURES = sorted(FAMILIES["bert"].architectures)


def _every_head_and_config():
    """(architecture, family, config name) for every head of every family and each of the
    family's test configurations; the quick tier takes one configuration per family."""
    for family, configs in FAMILY_CONFIGS.items():
        for architecture in sorted(FAMILIES[family].hf_architectures):
            for i, name in enumerate(sorted(configs)):
                case = (architecture, family, name)
                yield case if i == 0 else pytest.param(*case, marks=pytest.mark.slow)


@pytest.mark.parametrize("architecture, family, config_name", list(_every_head_and_config()))
def test_every_head_matches_transformers(tmp_path, architecture, family, config_name):
    config = FAMILY_CONFIGS[family][config_name]
    torch_model = save_random_hf_model(tmp_path, architecture, config)
    batch = padded_batch(config)
    expected = torch_outputs(torch_model, batch)

    model, params = hf.from_pretrained(tmp_path)
    assert type(model).__name__ == architecture
    out = model.apply({"params": params}, **batch)

    for name, want in expected.items():
        got = np.asarray(getattr(out, name))
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=name)
    assert "last_hidden_state" in expected  # and every output the head gives (what verify compares):
    assert set(FAMILIES[family].hf.output_names(architecture)) <= set(expected), expected.keys()


@pytest.mark.parametrize("architecture, family, config_name", [
    (architecture, family, sorted(configs)[0])
    for family, configs in FAMILY_CONFIGS.items() for architecture in sorted(FAMILIES[family].hf_architectures)
])
def test_round_trip_is_bit_identical(tmp_path, architecture, family, config_name):
    config = FAMILY_CONFIGS[family][config_name]
    save_random_hf_model(tmp_path / "hf", architecture, config)
    original = load_file(tmp_path / "hf" / "model.safetensors")

    for scan_layers in (False, True):
        model, params = hf.from_pretrained(tmp_path / "hf", scan_layers=scan_layers)
        out_dir = tmp_path / f"out_scan{scan_layers}"
        hf.save_pretrained(model, params, out_dir)
        written = load_file(out_dir / "model.safetensors")
        assert sorted(written) == sorted(original)
        for key, tensor in original.items():
            assert written[key].dtype == tensor.dtype and written[key].tobytes() == tensor.tobytes(), key

        auto_class = getattr(transformers, architecture)
        reloaded, info = auto_class.from_pretrained(out_dir, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        assert json.loads((out_dir / "config.json").read_text())["architectures"] == [architecture]
        assert json.loads((out_dir / "config.json").read_text())["model_type"] == FAMILIES[family].model_types[0]


def test_untied_decoder_exports_to_transformers(tmp_path):
    config = CONFIGS["relu_h32_untied"]
    save_random_hf_model(tmp_path / "hf", "BertForPreTraining", config)
    model, params = hf.from_pretrained(tmp_path / "hf")
    assert "decoder" in params["mlm"]
    hf.save_pretrained(model, params, tmp_path / "out")
    reloaded, info = transformers.BertForPreTraining.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    batch = padded_batch(config)
    np.testing.assert_allclose(
        model.apply({"params": params}, **batch).mlm_logits,
        torch_outputs(reloaded.eval(), batch)["mlm_logits"],
        rtol=0,
        atol=1e-5,
    )


def test_scanned_and_unrolled_layouts_agree(tmp_path):
    config = CONFIGS["gelu_new_h20_regression"]
    save_random_hf_model(tmp_path, "BertForPreTraining", config)
    batch = padded_batch(config)
    unrolled_model, unrolled = hf.from_pretrained(tmp_path)
    scanned_model, scanned = hf.from_pretrained(tmp_path, scan_layers=True)
    assert "layers" in scanned["bert"]["encoder"] and "layer_0" in unrolled["bert"]["encoder"]
    a = unrolled_model.apply({"params": unrolled}, **batch)
    b = scanned_model.apply({"params": scanned}, **batch)
    for name in ("last_hidden_state", "pooler_output", "mlm_logits", "nsp_logits"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=1e-6, err_msg=name)
    back = restack(scanned, scanned_model, scan_layers=False)
    for i in range(config["num_hidden_layers"]):
        np.testing.assert_array_equal(
            back["bert"]["encoder"][f"layer_{i}"]["mlp"]["output"]["kernel"],
            unrolled["bert"]["encoder"][f"layer_{i}"]["mlp"]["output"]["kernel"],
        )


def test_old_key_spellings_and_pytorch_bin(tmp_path):
    """gamma/beta LayerNorm names, no `bert.` prefix, buffers, and pytorch_model.bin all load."""
    import torch

    config = CONFIGS["gelu_h36"]
    torch_model = save_random_hf_model(tmp_path / "new", "BertForSequenceClassification", config)
    old = {}
    for key, tensor in torch_model.state_dict().items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        old[key.removeprefix("bert.")] = tensor.clone()
    old["embeddings.position_ids"] = torch.arange(config["max_position_embeddings"])[None]
    (tmp_path / "old").mkdir()
    torch.save(old, tmp_path / "old" / "pytorch_model.bin")
    (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())

    batch = padded_batch(config)
    expected = torch_outputs(torch_model, batch)["logits"]
    model, params = hf.from_pretrained(tmp_path / "old")
    np.testing.assert_allclose(model.apply({"params": params}, **batch).logits, expected, atol=1e-5)


@pytest.mark.slow
def test_new_head_on_a_bare_encoder_is_initialised(tmp_path, minilm_dir):
    model, params = hf.from_pretrained(minilm_dir, architecture="BertForSequenceClassification", num_labels=4)
    assert params["classifier"]["kernel"].shape == (384, 4)
    assert float(np.abs(params["classifier"]["kernel"]).max()) > 0
    _, base = hf.from_pretrained(minilm_dir)
    np.testing.assert_array_equal(
        params["bert"]["pooler"]["kernel"], base["bert"]["pooler"]["kernel"]
    )


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Checkpoints that resume exactly are worth the trouble.",
    "A short one.",
    "Sharding a BERT encoder over a mesh of devices keeps every chip busy, said nobody at lunch.",
]


def test_real_pretrained_minilm_matches_transformers(minilm_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="np"))
    assert batch["input_ids"].shape[0] == len(SENTENCES) and batch["attention_mask"].min() == 0
    torch_model = transformers.BertModel.from_pretrained(minilm_dir).eval()
    expected = torch_outputs(torch_model, batch)

    model, params = hf.from_pretrained(minilm_dir)
    out = model.apply({"params": params}, **batch)
    np.testing.assert_allclose(out.last_hidden_state, expected["last_hidden_state"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(out.pooler_output, expected["pooler_output"], rtol=0, atol=1e-4)
