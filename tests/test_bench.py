"""`python -m flaxft.bench`: the model-FLOP count, the peak table and the CLI.

(That masked-only MLM logits equal the full logits at those positions is in test_models.)
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.extend import core as jax_core

from flaxft import bench
from flaxft.data import default_corpus
from flaxft.models import FAMILIES, BertConfig, BertForMaskedLM, BertForPreTraining, init_params
from flaxft.models.bert.flops import train_flops
from flaxft.models.electra import ElectraConfig, ElectraGeneratorDiscriminator

REPO = Path(__file__).resolve().parents[1]
SMALL = BertConfig(
    vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
    max_position_embeddings=16,
)


def test_flops_match_a_hand_count():
    # D=16, F=24, V=50, 2 layers; B=3 rows of L=8 tokens, M=2 predictions per row.
    # Per token per layer: q, k, v, out 4*16*16 = 1024 weights, MLP 2*16*24 = 768:
    # 6 * 1792 = 10752; attention 3 (fwd+bwd) * 2 (QK^T, PV) * 2 * 8 * 16 = 1536.
    first_layer = 3 * 8 * (10752 + 1536)  # 294,912
    # The last layer's keys and values at all 8 tokens (6 * 2*16*16 = 3072 each); query,
    # output projection, MLP (6 * (512 + 768) = 7680) and attention (1536) only at the
    # 2 masked positions plus the pooled first token with NSP (3 rows), else 2 rows.
    last_layer = {True: 3 * (8 * 3072 + 3 * (7680 + 1536)), False: 3 * (8 * 3072 + 2 * (7680 + 1536))}
    mlm = 3 * 2 * 6 * (16 * 16 + 16 * 50)  # transform + tied decoder at 6 positions: 38,016
    nsp = 3 * 6 * (16 * 16 + 16 * 2)  # pooler + NSP per row: 5,184
    expected = first_layer + last_layer[True] + mlm + nsp
    assert train_flops(SMALL, 3, 8, 2, with_nsp=True) == expected == 494_784
    assert train_flops(SMALL, 3, 8, 2, with_nsp=False) == first_layer + last_layer[False] + mlm
    # A last layer computing every row, and the peer's full-vocabulary head (M = L).
    full_encoder = 2 * first_layer
    assert train_flops(SMALL, 3, 8, 2, True, last_layer_rows=8) == full_encoder + mlm + nsp
    assert train_flops(SMALL, 3, 8, 8, True) == full_encoder + 3 * 8 * 6 * (16 * 16 + 16 * 50) + nsp


def _dot_flops(jaxpr) -> int:
    """2 x multiply-adds of every dot_general in a jaxpr, nested jaxprs included (scan
    bodies times their length)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
            lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
            free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
            total += 2 * math.prod(lhs) * math.prod(free)
        times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax_core.ClosedJaxpr):
                    total += times * _dot_flops(sub.jaxpr)
                elif isinstance(sub, jax_core.Jaxpr):
                    total += times * _dot_flops(sub)
    return total


@pytest.mark.parametrize(
    "architecture, with_nsp, scan_layers, masked",
    [(BertForPreTraining, True, False, True), (BertForPreTraining, True, True, False),
     (BertForMaskedLM, False, False, True), (BertForMaskedLM, False, True, True)],
)
def test_flops_equal_the_matmuls_jax_differentiates(architecture, with_nsp, scan_layers, masked):
    """The formula counts exactly the dot_general FLOPs of the model's gradient, dropout on
    (a scanned last layer computes every row, so it is counted at all of them)."""
    batch, length, predictions = 3, 8, 2
    model = architecture(SMALL.replace(scan_layers=scan_layers))
    params = jax.eval_shape(lambda: nn.meta.unbox(init_params(model, jax.random.key(0), length)))
    ids = jnp.ones((batch, length), jnp.int32)
    positions = jnp.tile(jnp.arange(1, predictions + 1), (batch, 1)) if masked else None

    def loss(params):
        out = model.apply({"params": params}, ids, masked_positions=positions, deterministic=False,
                          rngs={"dropout": jax.random.key(1)})
        return out.mlm_logits.sum() + (out.nsp_logits.sum() if with_nsp else 0.0)

    counted = _dot_flops(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
    m = predictions if masked else length
    last_rows = length if scan_layers else None
    assert counted == train_flops(SMALL, batch, length, m, with_nsp, last_rows)


def test_page_faults_count_freshly_touched_memory():
    """The counter behind host_page_faults_per_step: writing 64 MB of fresh memory faults
    in at least its 2 MB pages (4 KB pages without transparent huge pages: 16384)."""
    import numpy as np

    before = bench.page_faults()
    block = np.empty(64 << 20, np.uint8)
    block[::4096] = 1
    assert bench.page_faults() - before >= (64 << 20) // (2 << 20)


@pytest.mark.parametrize("embedding_size", [8, 16])
def test_electra_pretraining_flops_equal_the_matmuls_jax_differentiates(embedding_size):
    """ELECTRA's count: a generator (half as wide here) at the masked positions and the
    discriminator at every token, the embeddings projections (when E != D) and both heads."""
    batch, length, predictions = 3, 8, 2
    config = ElectraConfig(vocab_size=50, embedding_size=embedding_size, hidden_size=16, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=24, max_position_embeddings=16,
                           generator_size=0.5)
    model = ElectraGeneratorDiscriminator(config)
    params = jax.eval_shape(lambda: nn.meta.unbox(init_params(model, jax.random.key(0), length)))
    ids = jnp.ones((batch, length), jnp.int32)
    positions = jnp.tile(jnp.arange(1, predictions + 1), (batch, 1))

    def loss(params):
        out = model.apply({"params": params}, ids, masked_positions=positions, masked_weights=jnp.ones(positions.shape))
        return out.mlm_logits.sum() + out.logits.sum()

    counted = _dot_flops(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
    assert counted == FAMILIES["electra"].train_flops(config, batch, length, predictions, False)


@pytest.mark.parametrize(
    "kind, peak",
    [("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5p", 459e12), ("TPU v6 lite", 918e12),
     ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-40GB", 312e12),
     ("NVIDIA H100 PCIe", 756e12), ("NVIDIA B200", 2250e12), ("NVIDIA GB200", 2500e12), ("TPU v5", 459e12),
     ("cpu", None)],
)
def test_published_peaks(kind, peak):
    assert bench.published_peak_flops(kind) == peak


def test_device_fields_carry_the_published_peak_and_device_memory():
    """The JSON's device fields for a GPU kind: its published peak, the largest peak use
    and the smallest limit of the devices' memory statistics; None where none are kept."""
    stats = [{"peak_bytes_in_use": 30e9, "bytes_limit": 140e9}, {"peak_bytes_in_use": 31e9, "bytes_limit": 139e9}]
    fields = bench.device_fields("NVIDIA H200", 8, stats)
    assert fields == {
        "device_kind": "NVIDIA H200", "device_count": 8, "peak_flops_per_device": 989e12,
        "peak_flops_source": bench.PEAK_PUBLISHED, "device_mem_gb": 31.0, "device_mem_limit_gb": 139.0,
    }
    assert set(fields) <= set(bench._JSON_FIELDS)
    cpu = bench.device_fields("cpu", 8, [None, {}], (1e11, bench.measured_peak_source("float32")))
    assert cpu["peak_flops_per_device"] == 1e11 and cpu["device_mem_gb"] is cpu["device_mem_limit_gb"] is None
    with pytest.raises(ValueError, match="cpu"):
        bench.device_fields("cpu", 1, [None])


@pytest.mark.parametrize("pad_fraction, real, used", [(0.0, 32, 5), (0.25, 24, 4), (0.9, 4, 1)])
def test_synthetic_batch_pads_the_tail_of_every_row(pad_fraction, real, used):
    """The peers' rule (the tail int(L * F) positions are padding); masked slots only on
    real tokens, in proportion, the unused ones as the loader leaves them."""
    import ml_collections
    import numpy as np

    config = ml_collections.ConfigDict({
        "seq_len": 32, "data": {"max_predictions_per_seq": 5, "format": "bert"},
        "model": {"vocab_size": 100, "pad_token_id": 1},
    })
    batch = bench.synthetic_batch(config, 3, pad_fraction=pad_fraction)
    assert bench.real_length(32, pad_fraction) == real
    np.testing.assert_array_equal(batch["attention_mask"].sum(1), [real] * 3)
    np.testing.assert_array_equal(batch["segment_ids"], batch["attention_mask"])
    assert (batch["input_ids"][:, real:] == 1).all() and (batch["token_type_ids"][:, real:] == 0).all()
    assert (batch["masked_weights"].sum(1) == used).all()
    chosen = batch["masked_positions"][:, :used]
    assert (chosen >= 1).all() and (chosen < real).all() and (np.diff(chosen, axis=1) > 0).all()
    assert (batch["masked_positions"][:, used:] == 0).all() and (batch["masked_labels"][:, used:] == 0).all()


def _bench(*args, cwd=REPO):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "flaxft.bench", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_cli_runs_the_train_step_and_the_loader(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in default_corpus()[:300]))
    result = _bench(
        "--config", REPO / "configs/pretrain_tiny.py", "--what", "all", "--steps", 2, "--warmup", 1,
        "--data_batches", 5, "--peak_matmul_size", 128,
        "--config.global_batch_size=8", "--config.seq_len=32", "--config.data.max_predictions_per_seq=5",
        f"--config.data.path={corpus}", "--config.model.vocab_size=600", "--config.model.hidden_size=32",
        "--config.model.intermediate_size=64", "--config.model.max_position_embeddings=64",
        "--config.model.num_hidden_layers=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    for field in bench._JSON_FIELDS:
        assert field in out, field
    assert out["device_count"] == jax.device_count() == 8  # conftest's simulated devices
    assert out["device_kind"] == "cpu" and out["device_mem_gb"] is None
    assert out["peak_flops_source"] == bench.measured_peak_source("float32") and out["peak_flops_per_device"] > 0
    config = BertConfig(vocab_size=600, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    assert out["model_flops_per_step"] == train_flops(config, 8, 32, 5, with_nsp=True)
    assert out["model_flops_per_token"] == out["model_flops_per_step"] / (8 * 32)
    assert len(out["step_times_s"]) == 2 and out["step_time_s"] > 0
    assert isinstance(out["host_page_faults_per_step"], (int, float))
    assert out["tokens_per_sec"] == pytest.approx(8 * 32 / out["step_time_s"])
    assert 0 < out["mfu"] and 0 < out["mfu_cpu_time"]
    assert out["compile_s"] > 0 and out["peak_host_mem_gb"] > 0.1
    assert math.isfinite(out["loss"])
    assert out["data_tokens_per_sec"] > 0 and out["data_first_batch_s"] >= 0
    assert out["data_vs_train"] == pytest.approx(out["data_tokens_per_sec"] / out["tokens_per_sec"])
    assert "tokens/s" in lines[-2]  # the human-readable summary


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--config.global_batch_sise=8"], "global_batch_sise"),
        (["--steps", "0"], "--steps"),
        (["--config.global_batch_size=7"], "global_batch_size"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, needle):
    result = _bench("--config", REPO / "configs/pretrain_tiny.py", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr, result.stderr
    assert result.stdout == ""


def test_cli_needs_a_config():
    result = _bench("--steps", "1")
    assert result.returncode == 2 and "--config" in result.stderr


@pytest.mark.parametrize("scan_layers", [False, True])
def test_modernbert_flops_equal_the_matmuls_jax_differentiates(scan_layers):
    """ModernBERT's count (fused Wqkv, GeGLU, prediction head and decoder at the masked
    rows) against the gradient's dot_generals. flaxft computes a sliding window as masked
    full attention, so the jaxpr matches the count of the same layers all global; the
    count itself charges a window only its keys."""
    from flaxft.models.modernbert import ModernBertConfig, ModernBertForMaskedLM

    batch, length, predictions = 3, 12, 2
    config = ModernBertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                              intermediate_size=24, max_position_embeddings=16, local_attention=4,
                              scan_layers=scan_layers, pad_token_id=0)
    assert config.layer_types == ("full_attention", "sliding_attention", "sliding_attention")
    model = ModernBertForMaskedLM(config)
    params = jax.eval_shape(lambda: nn.meta.unbox(init_params(model, jax.random.key(0), length)))
    ids = jnp.ones((batch, length), jnp.int32)
    positions = jnp.tile(jnp.arange(1, predictions + 1), (batch, 1))

    def loss(params):
        return model.apply({"params": params}, ids, masked_positions=positions).mlm_logits.sum()

    counted = _dot_flops(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
    dense = config.replace(layer_types=("full_attention",) * 3)
    flops = FAMILIES["modernbert"].train_flops
    last_rows = length if scan_layers else None
    assert counted == flops(dense, batch, length, predictions, False, last_rows)
    assert flops(config, batch, length, predictions, False, last_rows) < counted
