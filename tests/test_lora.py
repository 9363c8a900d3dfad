"""LoRA: adapters in every family's dense layers equal their merged kernels, start as the
base model, carry logical axes and shard like their kernels; the peft config group is
checked; `export-hf` writes the merged model that transformers loads, and `export-hf
--adapter` a PEFT adapter folder that the `peft` library loads onto the base model, both
predicting what flaxft predicts."""

import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flaxft import checkpoint, convert, finetune, hf, hf_peft, sharding
from flaxft import config as config_lib
from flaxft.errors import InputError
from flaxft.models import ARCHITECTURES, abstract_params, family_of, fit_params, init_params, lora
from tests.hf_models import FAMILY_CONFIGS, padded_batch, save_random_hf_model
from tests.test_finetune import classification_config, small_classification
from tests.tiny import assert_resumes_bit_identically

SIZES = dict(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24,
             max_position_embeddings=32)
LORA = dict(lora_rank=3, lora_alpha=6.0, lora_dropout=0.0)


def _lora_model(architecture: str, scan_layers: bool, targets: str = config_lib.LORA_TARGETS, **fields):
    config = family_of(architecture).config_class(**SIZES, scan_layers=scan_layers)
    return ARCHITECTURES[architecture](config.replace(**{**LORA, "lora_targets": targets, **fields}))


def _randomised_adapters(params: dict, seed: int = 0) -> dict:
    """`params` with every lora_b drawn at random (a fresh one is zero)."""
    flat = traverse_util.flatten_dict(params)
    keys = iter(jax.random.split(jax.random.key(seed), len(flat)))
    return traverse_util.unflatten_dict({
        path: 0.3 * jax.random.normal(next(keys), value.shape) if path[-1] == "lora_b" else value
        for path, value in flat.items()})


def _ids(seed: int = 1) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (2, 9), 0, SIZES["vocab_size"])


@functools.partial(jax.jit, static_argnums=0)
def _init(model: nn.Module, key: jax.Array) -> dict:
    return nn.meta.unbox(init_params(model, key))


@functools.partial(jax.jit, static_argnums=0)
def _apply(model: nn.Module, params: dict, ids: jax.Array, dropout_rng: jax.Array | None = None):
    """`model`'s outputs on ids; training mode (dropout) when given a dropout rng."""
    if dropout_rng is None:
        return model.apply({"params": params}, ids)
    return model.apply({"params": params}, ids, deterministic=False, rngs={"dropout": dropout_rng})


@pytest.mark.parametrize("architecture, scan_layers", [
    ("BertForSequenceClassification", False),
    ("ModernBertForSequenceClassification", True),
    pytest.param("BertForSequenceClassification", True, marks=pytest.mark.slow),
    pytest.param("ModernBertForSequenceClassification", False, marks=pytest.mark.slow),
    pytest.param("RobertaForTokenClassification", True, marks=pytest.mark.slow),
    pytest.param("ElectraForQuestionAnswering", False, marks=pytest.mark.slow),
])
def test_adapters_equal_their_merged_kernels_and_start_as_the_base_model(architecture, scan_layers):
    """Adapters on every kernel (single and two contracted axes, fused features, heads):
    a fresh model computes what the model without LoRA computes on the same weights, and
    random adapters what their merged kernels compute."""
    model = _lora_model(architecture, scan_layers, targets="kernel$")
    params = _init(model, jax.random.key(0))
    plain, plain_params = lora.merge(model, params)
    assert plain.config.lora_rank == 0 and not lora.adapted_kernels(plain)
    kernels = [p for p in traverse_util.flatten_dict(plain_params) if p[-1] == "kernel"]
    assert lora.adapted_kernels(model) == kernels
    outputs = ("logits",) if architecture.endswith("Classification") else ("start_logits", "end_logits")

    fresh, base = _apply(model, params, _ids()), _apply(plain, plain_params, _ids())
    for name in outputs:  # B = 0 adds exact zeros; XLA compiles the two programs apart (its own roundings)
        np.testing.assert_allclose(getattr(fresh, name), getattr(base, name), rtol=1e-5, atol=1e-7)

    trained = _randomised_adapters(params)
    merged_model, merged = lora.merge(model, trained)
    ours, theirs = _apply(model, trained, _ids()), _apply(merged_model, merged, _ids())
    for name in outputs:
        assert float(jnp.abs(getattr(ours, name) - getattr(base, name)).max()) > 1e-2  # the adapters count
        np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name), rtol=0, atol=1e-5)


def test_default_targets_are_the_attention_projections_of_every_family():
    for family in ("bert", "roberta", "xlm_roberta", "electra", "modernbert"):
        architecture = next(a for a in ARCHITECTURES if family_of(a).name == family and a.endswith("Classification"))
        for scan_layers in (False, True):
            got = {"/".join(path[-3:-1]) for path in lora.adapted_kernels(_lora_model(architecture, scan_layers))}
            want = {"attn/Wqkv"} if family == "modernbert" else {f"attention/{p}" for p in ("query", "key", "value")}
            assert got == want, (architecture, scan_layers)
        assert len(lora.adapted_kernels(_lora_model(architecture, False))) == len(want) * SIZES["num_hidden_layers"]


def test_adapter_dropout_only_in_training():
    model = _lora_model("BertForSequenceClassification", False, lora_dropout=0.5)
    params = _randomised_adapters(_init(model, jax.random.key(0)))
    no_dropout = model.clone(config=model.config.replace(lora_dropout=0.0))
    eval_out = _apply(model, params, _ids()).last_hidden_state
    np.testing.assert_array_equal(eval_out, _apply(no_dropout, params, _ids()).last_hidden_state)
    rng = jax.random.key(5)
    with_lora_dropout = _apply(model, params, _ids(), rng).last_hidden_state
    without = _apply(no_dropout, params, _ids(), rng).last_hidden_state
    assert float(jnp.abs(with_lora_dropout - without).max()) > 1e-3


@pytest.mark.parametrize("scan_layers", [False, True])
def test_adapters_carry_logical_axes_and_shard_like_their_kernels(scan_layers):
    model = _lora_model("BertForSequenceClassification", scan_layers, targets="attention/(query|output)/kernel$")
    boxed = traverse_util.flatten_dict(abstract_params(model, boxed=True))
    mesh_config = sharding.default_mesh_config()
    mesh_config.update(data=1, fsdp=2, tensor=2)
    mesh = sharding.make_mesh(mesh_config, jax.devices()[:4])
    specs = traverse_util.flatten_dict(sharding.logical_shardings(
        traverse_util.unflatten_dict(boxed), mesh, sharding.logical_rules(mesh_config)))
    layer = ("bert", "encoder", "layers" if scan_layers else "layer_0", "attention")
    lead = ("layers",) if scan_layers else ()
    for name, contracted in (("query", 1), ("output", 2)):
        kernel, a, b = (boxed[layer + (name, leaf)] for leaf in ("kernel", "lora_a", "lora_b"))
        n = len(lead) + contracted
        assert a.names == (*kernel.names[:n], "lora") and b.names == (*lead, "lora", *kernel.names[n:])
        shape = kernel.value.shape
        assert a.value.shape == (*shape[:n], 3) and b.value.shape == (*shape[:len(lead)], 3, *shape[n:])
        kernel_spec, a_spec, b_spec = (tuple(specs[layer + (name, leaf)].spec) + (None,) * 4
                                       for leaf in ("kernel", "lora_a", "lora_b"))
        assert a_spec[:n + 1] == (*kernel_spec[:n], None)
        assert b_spec[:len(lead)] == kernel_spec[:len(lead)] and b_spec[len(lead)] is None
        assert b_spec[len(lead) + 1:][:4] == kernel_spec[n:][:4]
    query = specs[layer + ("query", "kernel")].spec
    assert "fsdp" in tuple(query) and "tensor" in tuple(query)  # the mesh does split them


def test_fit_params_starts_adapters_afresh_on_a_plain_checkpoint():
    model = _lora_model("ModernBertForSequenceClassification", True)
    plain = _lora_model("ModernBertForSequenceClassification", True, lora_rank=0)
    plain_params = _init(plain, jax.random.key(1))
    params = fit_params(plain_params, model, seed=2)
    flat, source = traverse_util.flatten_dict(params), traverse_util.flatten_dict(plain_params)
    assert set(flat) - set(source) == {p[:-1] + (leaf,) for p in lora.adapted_kernels(model)
                                       for leaf in ("lora_a", "lora_b")}
    assert all(np.array_equal(flat[p], source[p]) for p in source)
    assert all(not np.any(flat[p]) for p in flat if p[-1] == "lora_b")
    np.testing.assert_allclose(_apply(model, params, _ids()).logits, _apply(plain, plain_params, _ids()).logits,
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("key, value, message", [
    ("method", "adalora", "config.peft.method"),
    ("lora_rank", 0, "config.peft.lora_rank must be positive"),
    ("lora_alpha", -1.0, "config.peft.lora_alpha must be positive"),
    ("lora_dropout", 1.0, "config.peft.lora_dropout must be in [0, 1)"),
    ("lora_targets", "attention/(query", "config.peft.lora_targets"),
])
def test_config_refuses_bad_peft_values(key, value, message):
    config = classification_config("train.csv", "validation.csv", num_train_steps=10, **{"peft.method": "lora"})
    config.peft[key] = value
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        config_lib.validate(config)


def test_config_refuses_lora_for_pretraining_and_as_model_keys():
    config = config_lib.default_config()
    config.num_train_steps = 10
    config.peft.method = "lora"
    with pytest.raises(InputError, match="config.peft.method 'lora' is for fine-tuning"):
        config_lib.validate(config)
    assert not set(config.model) & {"lora_rank", "lora_alpha", "lora_dropout", "lora_targets"}


def test_finetune_setup_builds_the_lora_model_and_refuses_targets_matching_nothing(tmp_path, task_files, minilm_dir):
    train_file, validation_file = small_classification(task_files, tmp_path, rows=32)
    config = classification_config(train_file, validation_file, init_from=str(minilm_dir),
                                   **{"peft.method": "lora", "peft.lora_targets": "attention/value/kernel$"})
    run = finetune.setup(config, tmp_path / "run")
    assert (run.model.config.lora_rank, run.model.config.lora_alpha, run.model.config.lora_dropout) == (8, 16.0, 0.1)
    assert len(lora.adapted_kernels(run.model)) == 6 and "lora_rank" not in run.config.model
    flat = traverse_util.flatten_dict(run.init_params())
    assert sum(p[-1] == "lora_b" and not np.any(flat[p]) for p in flat) == 6

    config.peft.lora_targets = "attn/Wqkv/kernel$"
    with pytest.raises(InputError, match=r"config.peft.lora_targets 'attn/Wqkv/kernel\$' matches no kernel of "
                                         r"BertForSequenceClassification \(such as bert/encoder/layer_0"):
        finetune.setup(config, tmp_path / "run2")


# ----------------------------------------------------------------------------- exports


def _lora_run(folder, base, architecture: str, hf_config: dict, scan_layers: bool):
    """A LoRA fine-tuning run's workdir over the Hugging Face folder `base`, as training
    leaves it: adapters and the new head trained (randomised), every other parameter the
    base model's (BERT's pooler, which a masked-LM base lacks, starts afresh); its
    config.json names init_from and the peft settings."""
    model, params = hf.from_pretrained(base, architecture, num_labels=hf_config["num_labels"],
                                       scan_layers=scan_layers, lora_targets=config_lib.LORA_TARGETS, **LORA)
    flat = traverse_util.flatten_dict(_randomised_adapters(params))
    keys = iter(jax.random.split(jax.random.key(9), len(flat)))
    encoder = family_of(model).encoder_key
    flat = {p: v + 0.1 * jax.random.normal(next(keys), v.shape) if p[0] != encoder else v for p, v in flat.items()}
    params = traverse_util.unflatten_dict(flat)
    checkpoint.save_model(folder, model, params, source_dir=base)
    run_config = {"init_from": str(base), "peft": {"method": "lora", **LORA, "lora_targets": config_lib.LORA_TARGETS}}
    (folder / "config.json").write_text(json.dumps(run_config))
    return model, params


def _torch_logits(torch_model, batch: dict) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch_model(**{k: torch.tensor(v) for k, v in batch.items()}).logits.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("family, config_name, scan_layers", [("bert", "gelu_h36", False),
                                                              ("modernbert", "global2_window4_cls", True)])
def test_merged_and_adapter_exports_predict_what_flaxft_predicts(tmp_path, family, config_name, scan_layers):
    import peft
    import transformers

    hf_config = FAMILY_CONFIGS[family][config_name]
    prefix = "ModernBert" if family == "modernbert" else "Bert"
    base = tmp_path / "base"
    save_random_hf_model(base, f"{prefix}ForMaskedLM", hf_config)
    model, params = _lora_run(tmp_path / "run", base, f"{prefix}ForSequenceClassification", hf_config, scan_layers)
    batch = padded_batch(hf_config)
    if family == "modernbert":  # no token types
        del batch["token_type_ids"]
    ours = np.asarray(model.apply({"params": params}, **{k: jnp.asarray(v) for k, v in batch.items()}).logits)

    convert.export_hf(str(tmp_path / "run"), str(tmp_path / "merged"))
    assert not (tmp_path / "merged" / hf_peft.ADAPTER_CONFIG).exists()
    merged, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "merged", attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    np.testing.assert_allclose(_torch_logits(merged.eval(), batch), ours, rtol=0, atol=1e-5)

    convert.export_hf(str(tmp_path / "run"), str(tmp_path / "adapter"), adapter=True)
    adapter_config = json.loads((tmp_path / "adapter" / hf_peft.ADAPTER_CONFIG).read_text())
    assert adapter_config["base_model_name_or_path"] == str(base) and adapter_config["task_type"] == "SEQ_CLS"
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (3, 6.0)
    n = hf_config["num_hidden_layers"]
    if family == "bert":
        assert adapter_config["modules_to_save"] == ["bert.pooler.dense", "classifier"]  # new in the run
        assert len(adapter_config["target_modules"]) == 3 * n
        assert "bert.encoder.layer.0.attention.self.query" in adapter_config["target_modules"]
    else:
        assert adapter_config["modules_to_save"] == ["classifier", "head"]  # the prediction head, whole
        assert adapter_config["target_modules"] == [f"model.layers.{i}.attn.Wqkv" for i in range(n)]
    base_model = transformers.AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=hf_config["num_labels"], attn_implementation="eager")
    with_adapter = peft.PeftModel.from_pretrained(base_model, tmp_path / "adapter").eval()
    np.testing.assert_allclose(_torch_logits(with_adapter, batch), ours, rtol=0, atol=1e-5)


def test_adapter_export_refuses_a_trained_adapted_kernel(tmp_path):
    hf_config = FAMILY_CONFIGS["bert"]["gelu_h36"]
    save_random_hf_model(tmp_path / "base", "BertForMaskedLM", hf_config)
    model, params = hf.from_pretrained(tmp_path / "base", "BertForSequenceClassification", num_labels=3,
                                       lora_targets=config_lib.LORA_TARGETS, **LORA)
    base_model, base_params = hf.from_pretrained(tmp_path / "base")
    state, targets, to_save = hf_peft.adapter_state(model, params, base_params)
    assert state[f"{hf_peft.PREFIX}bert.encoder.layer.1.attention.self.value.lora_A.weight"].shape == (3, 36)
    assert state[f"{hf_peft.PREFIX}bert.encoder.layer.1.attention.self.value.lora_B.weight"].shape == (36, 3)
    assert not np.any(state[f"{hf_peft.PREFIX}bert.encoder.layer.1.attention.self.value.lora_B.weight"])
    params["bert"]["encoder"]["layer_1"]["attention"]["value"]["kernel"] += 1e-3
    with pytest.raises(InputError, match="parameter bert/encoder/layer_1/attention/value/kernel carries a LoRA "
                                         "adapter but is not the base model's"):
        hf_peft.adapter_state(model, params, base_params)


def test_adapter_export_of_a_plain_checkpoint_exits_2(tmp_path):
    save_random_hf_model(tmp_path / "base", "BertForMaskedLM", FAMILY_CONFIGS["bert"]["gelu_h36"])
    convert.import_hf(str(tmp_path / "base"), str(tmp_path / "ckpt"))
    result = subprocess.run([sys.executable, "-m", "flaxft.convert", "export-hf", "--adapter", str(tmp_path / "ckpt"),
                             str(tmp_path / "adapter")], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: BertForMaskedLM has no LoRA adapters"), result.stderr
    assert not (tmp_path / "adapter").exists()


@pytest.mark.slow
def test_a_lora_run_trains_only_adapters_and_heads_resumes_and_exports(tmp_path, task_files, minilm_dir, capsys):
    """A real LoRA fine-tuning run of MiniLM on an FSDP mesh: only the adapters and the
    heads MiniLM lacks train (under 2% of the parameters; the start-up line says so), every
    other parameter ends bit for bit as init_from had it and has no optimizer state; a run
    resumed from the middle checkpoint ends bit-identical; the merged export (transformers)
    and the adapter export (peft over MiniLM's folder) predict what the run predicts."""
    import peft
    import transformers
    from orbax import checkpoint as ocp

    from flaxft import train

    train_file, validation_file = small_classification(task_files, tmp_path, rows=64)
    config = classification_config(train_file, validation_file, init_from=str(minilm_dir), num_train_steps=4,
                                   checkpoint_every_steps=2, eval_every_steps=4, log_every_steps=1,
                                   learning_rate=1e-3, **{"peft.method": "lora", "peft.lora_rank": 4,
                                                          "mesh.data": 1, "mesh.fsdp": 8, "checkpoint.keep": 5})
    train.run(config, str(tmp_path / "run"))
    model, final = checkpoint.load_model(tmp_path / "run")
    _, source = hf.from_pretrained(minilm_dir)
    source = traverse_util.flatten_dict(source, sep="/")
    final = traverse_util.flatten_dict(final, sep="/")
    trained = {path for path in final if path.rsplit("/", 1)[-1].startswith("lora_") or path not in source}
    assert {path for path in trained if "lora_" not in path} == {"classifier/kernel", "classifier/bias"}
    for path, value in final.items():
        if path in trained:
            assert np.any(value != 0), path
        else:
            np.testing.assert_array_equal(value, source[path], err_msg=path)
    assert all(np.any(final[path] != 0) for path in final if path.endswith("lora_b"))  # the adapters moved
    metadata = ocp.StandardCheckpointer().metadata(tmp_path / "run" / "checkpoints" / "4" / "train_state")
    for moment in ("mu", "nu"):
        assert set(traverse_util.flatten_dict(metadata.item_metadata.tree["opt_state"][moment], sep="/")) == trained
    trains, total = sum(final[p].size for p in trained), sum(v.size for v in final.values())
    assert trains / total < 0.02
    assert f"{trains:,} of {total:,} parameters train ({trains / total:.1%})" in capsys.readouterr().out

    assert_resumes_bit_identically(config, tmp_path / "run", tmp_path / "resumed", from_step_removed=4)

    hf_config = json.loads((minilm_dir / "config.json").read_text())
    batch = padded_batch(hf_config)
    params = traverse_util.unflatten_dict(final, sep="/")
    ours = np.asarray(model.apply({"params": params}, **{k: jnp.asarray(v) for k, v in batch.items()}).logits)
    convert.export_hf(str(tmp_path / "run"), str(tmp_path / "merged"))
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged",
                                                                             attn_implementation="eager")
    np.testing.assert_allclose(_torch_logits(merged.eval(), batch), ours, rtol=0, atol=1e-5)
    convert.export_hf(str(tmp_path / "run"), str(tmp_path / "adapter"), adapter=True)
    base_model = transformers.AutoModelForSequenceClassification.from_pretrained(
        minilm_dir, num_labels=model.config.num_labels, attn_implementation="eager")
    with_adapter = peft.PeftModel.from_pretrained(base_model, tmp_path / "adapter").eval()
    np.testing.assert_allclose(_torch_logits(with_adapter, batch), ours, rtol=0, atol=1e-5)
