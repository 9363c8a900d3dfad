"""ELECTRA pretraining (replaced-token detection): the generator + discriminator model,
the task's labels and metrics, a short run that learns, the export of both models to
transformers, fine-tuning from the discriminator, every mesh layout and exact resume."""

import math
import signal
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
import transformers

from flaxft import checkpoint, pretrain, report, train
from flaxft import config as config_lib
from flaxft.errors import InputError
from flaxft.models import EncoderOutput, fit_params, init_params
from flaxft.models.electra import (
    ElectraConfig,
    ElectraForMaskedLM,
    ElectraForPreTraining,
    ElectraForSequenceClassification,
    ElectraGeneratorDiscriminator,
)
from flaxft.tasks import ReplacedTokenDetection
from flaxft.tasks.replaced_token_detection import replaced_tokens
from tests.tiny import REPO, config_flags, losses, single_device_run, tiny_electra_config, wait_for, write_corpus

CONFIG = ElectraConfig(vocab_size=50, embedding_size=12, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=20, max_position_embeddings=32, generator_size=0.5,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
IDS = jnp.asarray(np.random.default_rng(0).integers(5, 50, (2, 10)), jnp.int32)
POSITIONS = jnp.array([[1, 3, 0], [2, 4, 5]])
WEIGHTS = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # row 0's third entry is padding


@pytest.fixture(scope="module")
def model_and_params():
    model = ElectraGeneratorDiscriminator(CONFIG)
    return model, nn.meta.unbox(init_params(model, jax.random.key(0)))


def _apply(model, params, **kwargs):
    return model.apply({"params": params}, IDS, masked_positions=POSITIONS, masked_weights=WEIGHTS,
                       deterministic=False, rngs={"dropout": jax.random.key(1)}, **kwargs)


def test_the_two_models_share_embeddings_and_split_into_the_hugging_face_ones(model_and_params):
    """The generator (half as wide) reads the discriminator's embeddings; the discriminator
    reads the row with the generator's samples at the real masked positions only; each part
    computes exactly what the standalone Hugging Face architecture computes."""
    model, params = model_and_params
    assert "embeddings" not in params["generator"]["electra"]
    assert params["generator"]["electra"]["encoder"]["layer_0"]["attention"]["query"]["kernel"].shape == (8, 2, 4)
    out = _apply(model, params)
    sampled = np.asarray(out.sampled_ids)
    assert sampled[0, 2] == IDS[0, 0]  # the padding entry keeps the token at position 0

    parts = model.hf_models(params)
    discriminator, discriminator_params = parts[""]
    generator, generator_params = parts["generator"]
    assert isinstance(discriminator, ElectraForPreTraining) and isinstance(generator, ElectraForMaskedLM)
    assert generator.config.hidden_size == 8 and generator.config.embedding_size == 12
    seen = np.asarray(IDS).copy()
    for row in range(2):
        for position, weight, token in zip(np.asarray(POSITIONS[row]), np.asarray(WEIGHTS[row]), sampled[row]):
            if weight:
                seen[row, position] = token
    alone = discriminator.apply({"params": discriminator_params}, jnp.asarray(seen))
    np.testing.assert_allclose(out.logits, alone.logits, rtol=1e-6, atol=1e-6)
    generated = generator.apply({"params": generator_params}, IDS, masked_positions=POSITIONS)
    with pytest.raises(ValueError, match="masked_weights"):
        model.apply({"params": params}, IDS, masked_positions=POSITIONS)
    np.testing.assert_allclose(out.mlm_logits, generated.mlm_logits, rtol=1e-6, atol=1e-6)


def test_generator_sizes_must_come_out_whole():
    """generator_size scales width, heads and MLP size alike (ELECTRA-Base: 768/12/3072 x 1/3
    = 256/4/1024); one that would round some of them is refused, naming what it gives."""
    base = ElectraConfig(embedding_size=768, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                         generator_size=1 / 3)
    generator = base.generator_config()
    assert (generator.hidden_size, generator.num_attention_heads, generator.intermediate_size) == (256, 4, 1024)
    with pytest.raises(InputError, match=r"model.generator_size 0.3 must scale .* it gives 230.4, 3.6, 921.6"):
        base.replace(generator_size=0.3).generator_config()


def test_samples_follow_the_generator_and_carry_no_gradient(model_and_params):
    model, params = model_and_params
    biased = jax.tree.map(lambda x: x, params)
    biased["generator"]["generator_lm_head"]["bias"] = params["generator"]["generator_lm_head"]["bias"].at[7].set(1e4)
    assert np.all(np.asarray(_apply(model, biased).sampled_ids)[WEIGHTS > 0] == 7)

    def discriminator_score(params):
        return _apply(model, params).logits.sum()

    grads = jax.grad(discriminator_score)(params)
    generator_only = [g for path, g in jax.tree_util.tree_leaves_with_path(grads["generator"])]
    assert all(not np.any(np.asarray(g)) for g in generator_only)  # the samples are not differentiated
    assert np.any(np.asarray(grads["electra"]["embeddings"]["word_embeddings"]["embedding"]))


def test_labels_and_metrics_of_the_task():
    """A sample equal to the original token counts as original; padding entries and padded
    tokens count for nothing; precision and recall on replaced tokens."""
    batch = {
        "input_ids": jnp.zeros((1, 6), jnp.int32),
        "attention_mask": jnp.array([[1, 1, 1, 1, 1, 0]]),
        "masked_positions": jnp.array([[1, 2, 3, 0]]),
        "masked_labels": jnp.array([[10, 11, 12, 0]]),
        "masked_weights": jnp.array([[1.0, 1.0, 1.0, 0.0]]),
    }
    vocab = 20
    mlm_logits = jax.nn.one_hot(jnp.array([[10, 5, 5, 0]]), vocab) * 10.0  # right at position 1 only
    out = EncoderOutput(
        last_hidden_state=jnp.zeros((1, 6, 4)),
        mlm_logits=mlm_logits,
        sampled_ids=jnp.array([[10, 13, 14, 9]]),  # position 1 sampled the original: not replaced
        logits=jnp.array([[-5.0, -5.0, 5.0, -5.0, 5.0, 5.0]]),  # says "replaced" at 2 (right), 4 (wrong), 5 (padding)
    )
    task = ReplacedTokenDetection(discriminator_weight=50.0)
    loss, metrics = task.loss_and_metrics(out, batch, task.normalizers(batch))
    metrics = task.summarize({k: float(v) for k, v in metrics.items()})
    assert metrics["mlm_accuracy"] == pytest.approx(1 / 3)
    assert metrics["rtd_replaced_fraction"] == pytest.approx(2 / 5)  # positions 2 and 3 of 5 real tokens
    assert metrics["rtd_accuracy"] == pytest.approx(3 / 5)  # 0, 1, 2 right; 3 missed; 4 false alarm
    assert metrics["rtd_precision"] == pytest.approx(1 / 2)
    assert metrics["rtd_recall"] == pytest.approx(1 / 2)
    assert float(loss) == pytest.approx(metrics["mlm_loss"] + 50.0 * metrics["rtd_loss"], rel=1e-6)


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


LEARN = dict(num_train_steps=200, global_batch_size=16, learning_rate=5e-4, warmup_steps=10, log_every_steps=50,
             eval_every_steps=200, eval_batches=4, checkpoint_every_steps=200)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    """One short ELECTRA pretraining run, shared by the tests that read it."""
    workdir = tmp_path_factory.mktemp("electra")
    train.run(tiny_electra_config(corpus, **LEARN), str(workdir))
    return workdir


def _binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties half)."""
    ranks = scipy.stats.rankdata(scores)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.mark.slow
def test_the_discriminator_beats_the_all_original_baseline(trained, corpus):
    """After a short run the discriminator finds replaced tokens on the held-out rows, where
    calling every token original finds none: recall above 0 at a precision well above the
    replaced fraction (what flagging at random would reach), a loss below the entropy of
    the replaced fraction (the best loss of any rule blind to the tokens), and replaced
    tokens ranked above original ones (AUC). The total loss falls."""
    records = report.read_metrics(trained)
    final = [r for r in records if "eval_rtd_loss" in r][-1]
    assert final["eval_rtd_recall"] > 0.02, final
    assert final["eval_rtd_precision"] > 2 * final["eval_rtd_replaced_fraction"], final
    assert final["eval_rtd_loss"] < _binary_entropy(final["eval_rtd_replaced_fraction"]), final
    train_losses = [r["loss"] for r in records if "loss" in r]
    assert train_losses[-1] < 0.7 * train_losses[0]

    config = tiny_electra_config(corpus, **LEARN)
    run = pretrain.setup(config, trained)
    model, params = checkpoint.load_model(trained)
    scores, replaced = [], []
    for index in range(config.eval_batches):
        batch = {k: jnp.asarray(v) for k, v in run.evaluation.batch(index).items()}
        out = model.apply({"params": params}, **run.task.model_inputs(batch))
        labels = replaced_tokens(out.sampled_ids, batch["masked_labels"], batch["masked_weights"],
                                 batch["masked_positions"], batch["input_ids"].shape)
        real = np.asarray(batch["attention_mask"]) > 0
        scores.append(np.asarray(out.logits)[real])
        replaced.append(np.asarray(labels)[real])
    auc = _auc(np.concatenate(scores), np.concatenate(replaced))
    print(f"discriminator AUC {auc:.3f}; final eval {final}")
    assert auc > 0.6, auc


@pytest.mark.slow
def test_export_writes_the_discriminator_and_the_generator_for_transformers(trained, tmp_path):
    out = tmp_path / "hf"
    result = subprocess.run([sys.executable, "-m", "flaxft.convert", "export-hf", str(trained), str(out)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"ElectraForPreTraining to {out}, ElectraForMaskedLM to {out / 'generator'}" in result.stdout
    verified = subprocess.run([sys.executable, "-m", "flaxft.convert", "verify", str(out)], cwd=REPO,
                              capture_output=True, text=True)
    assert verified.returncode == 0 and verified.stdout.count("OK: largest difference") == 2, verified.stdout
    model, params = checkpoint.load_model(trained)
    parts = model.hf_models(params)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, model.config.vocab_size, (2, 12))
    for folder, architecture in (("", "ElectraForPreTraining"), ("generator", "ElectraForMaskedLM")):
        hf_dir = out / folder
        assert (hf_dir / "tokenizer.json").is_file()
        hf_model, info = getattr(transformers, architecture).from_pretrained(hf_dir, output_loading_info=True)
        assert not any(info.values()), info
        with torch.no_grad():
            want = hf_model.eval()(torch.tensor(ids)).logits.numpy()
        part, part_params = parts[folder]
        got = part.apply({"params": part_params}, jnp.asarray(ids, jnp.int32))
        np.testing.assert_allclose(got.logits if folder == "" else got.mlm_logits, want, atol=1e-4, rtol=1e-4)

    # Pretraining on from the exported folder starts from both models (generator/ included).
    again = checkpoint.load_init_params(str(out), model, seed=1)
    jax.tree.map(np.testing.assert_array_equal, again, jax.device_get(params))
    (out / "generator" / "config.json").unlink()
    without = checkpoint.load_init_params(str(out), model, seed=1)
    jax.tree.map(np.testing.assert_array_equal, without["electra"], jax.device_get(params["electra"]))
    assert not np.array_equal(without["generator"]["generator_lm_head"]["bias"],
                              params["generator"]["generator_lm_head"]["bias"])


@pytest.mark.slow
def test_fine_tuning_starts_from_the_discriminator(corpus, tmp_path):
    """init_from an ELECTRA pretraining workdir: the classifier's encoder is the
    discriminator's, the generator is left behind."""
    config = tiny_electra_config(corpus, num_train_steps=1, checkpoint_every_steps=1, eval_every_steps=1,
                                 eval_batches=1)
    train.run(config, str(tmp_path))
    _, params = checkpoint.load_model(tmp_path)
    classifier = ElectraForSequenceClassification(config_lib.model_config(config))
    fitted = fit_params(params, classifier)
    jax.tree.map(np.testing.assert_array_equal, fitted["electra"], jax.device_get(params["electra"]))
    assert "generator" not in fitted


STEPS = dict(num_train_steps=6, log_every_steps=1, eval_every_steps=6, checkpoint_every_steps=6)


@pytest.mark.slow
def test_a_data_fsdp_tensor_mesh_gives_the_single_device_losses(corpus, tmp_path):
    """Data, FSDP and tensor parallel at once (every layout alone: test_sharding, BERT)."""
    reference, _ = single_device_run("tiny_electra_config", corpus, STEPS, tmp_path / "one")
    for layout in ({"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2},):
        workdir = tmp_path / "_".join(f"{k[5:]}{v}" for k, v in layout.items())
        train.run(tiny_electra_config(corpus, **STEPS, **layout), str(workdir))
        got = losses(workdir)
        assert len(got) == len(reference) == 6
        assert max(abs(a - b) / abs(b) for a, b in zip(got, reference)) < 1e-5, (layout, got, reference)


@pytest.mark.slow
def test_ctrl_c_then_resume_is_bit_identical(corpus, tmp_path):
    run = dict(num_train_steps=12, log_every_steps=1, eval_every_steps=12, checkpoint_every_steps=4)
    reference = tmp_path / "reference"
    train.run(tiny_electra_config(corpus, **run), str(reference))
    workdir = tmp_path / "resumed"
    command = [sys.executable, "-m", "flaxft.main",
               *config_flags(tiny_electra_config(corpus, **run), "configs/pretrain_electra_tiny.py"),
               "--workdir", str(workdir)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: any(r["step"] >= 6 for r in report.read_metrics(workdir)) if (workdir / "metrics.jsonl").exists()
             else False, process)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130, process.stdout.read()
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    timeless = lambda records: [{k: v for k, v in r.items() if k != "tokens_per_sec"} for r in records]  # noqa: E731
    assert timeless(report.read_metrics(workdir)) == timeless(report.read_metrics(reference))
    _, want = checkpoint.load_model(reference)
    _, got = checkpoint.load_model(workdir)
    jax.tree.map(np.testing.assert_array_equal, got, want)
