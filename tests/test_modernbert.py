"""ModernBERT behaviour transformers' parity tests do not cover: padded == unpadded ==
packed per segment (rotary positions restart, neither global nor sliding-window attention
crosses a segment), the sliding window's reach, masked-only MLM rows, both layer layouts,
config.json spellings, and the FLOPs count."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxft import hf
from flaxft.errors import InputError
from flaxft.models import family_named, init_params, restack
from flaxft.models.modernbert import (
    ModernBertConfig,
    ModernBertForMaskedLM,
    ModernBertForSequenceClassification,
    ModernBertModel,
)
from flaxft.models.modernbert.encoder import sliding_window_mask_B1LL
from flaxft.models.modernbert.flops import keys_per_query, train_flops

# Global on layers 0 and 2 (every 2nd), windows of 2 tokens a side (local_attention 5 -> 2).
CONFIG = ModernBertConfig(
    vocab_size=97, hidden_size=24, num_hidden_layers=3, num_attention_heads=2, intermediate_size=20,
    layer_types=("full_attention", "sliding_attention", "full_attention"), local_attention=5,
    max_position_embeddings=64, pad_token_id=0, norm_bias=True, attention_bias=True, mlp_bias=True,
    global_rope_theta=500.0, local_rope_theta=50.0, num_labels=3,
)


def _params(model, seed=0):
    return nn.meta.unbox(init_params(model, jax.random.key(seed)))


def _sequences(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(4, CONFIG.vocab_size, n) for n in lengths]


@pytest.mark.parametrize("scan_layers", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_padded_unpadded_and_packed_rows_give_each_sequence_the_same_outputs(scan_layers):
    """Three sequences longer than the window: alone (unpadded), padded into a batch, and
    packed into one row with segment ids give the same hidden states and logits."""
    model = ModernBertForMaskedLM(CONFIG.replace(scan_layers=scan_layers))
    params = _params(model)
    apply = jax.jit(model.apply)
    seqs = _sequences((9, 7, 11))
    alone = [apply({"params": params}, s[None]) for s in seqs]

    length = 16
    padded = np.zeros((3, length), np.int64)
    mask = np.zeros((3, length), np.int64)
    for i, s in enumerate(seqs):
        padded[i, : len(s)], mask[i, : len(s)] = s, 1
    out_padded = apply({"params": params}, padded, attention_mask=mask)

    packed = np.zeros((1, 32), np.int64)
    segments = np.zeros((1, 32), np.int64)
    starts = np.cumsum([0, *[len(s) for s in seqs]])[:-1]
    for i, (s, start) in enumerate(zip(seqs, starts)):
        packed[0, start : start + len(s)], segments[0, start : start + len(s)] = s, i + 1
    out_packed = apply({"params": params}, packed, segment_ids=segments)

    for i, (s, start, ref) in enumerate(zip(seqs, starts, alone)):
        n = len(s)
        for name in ("last_hidden_state", "mlm_logits"):
            want = np.asarray(getattr(ref, name))[0]
            np.testing.assert_allclose(getattr(out_padded, name)[i, :n], want, rtol=0, atol=2e-5, err_msg=name)
            np.testing.assert_allclose(getattr(out_packed, name)[0, start : start + n], want, rtol=0, atol=2e-5,
                                       err_msg=name)


@pytest.mark.parametrize("pooling", [pytest.param("cls", marks=pytest.mark.slow), "mean"])
def test_packed_sequence_classification_pools_each_segment(pooling):
    model = ModernBertForSequenceClassification(CONFIG.replace(classifier_pooling=pooling))
    params = _params(model)
    apply = jax.jit(model.apply)
    seqs = _sequences((6, 9), seed=1)
    alone = np.concatenate([apply({"params": params}, s[None]).logits for s in seqs])
    packed = np.r_[seqs[0], seqs[1], [0, 0, 0]][None]
    segments = np.r_[np.ones(6), 2 * np.ones(9), [0, 0, 0]].astype(np.int64)[None]
    out = apply({"params": params}, packed, segment_ids=segments, cls_positions=np.array([[0, 6]]))
    np.testing.assert_allclose(out.logits[0], alone, rtol=0, atol=2e-5)
    padded = np.zeros((2, 12), np.int64)
    padded[0, :6], padded[1, :9] = seqs
    out = apply({"params": params}, padded, attention_mask=(padded > 0).astype(np.int64))
    np.testing.assert_allclose(out.logits, alone, rtol=0, atol=2e-5)


def test_sliding_window_mask_stops_at_the_window_and_at_segment_edges():
    segments = jnp.array([[1, 1, 1, 1, 1, 2, 2, 2, 0, 0]])
    from flaxft.models.attention import attention_mask_B1LL

    mask = np.asarray(sliding_window_mask_B1LL(attention_mask_B1LL(segments > 0, segments), 10, 2))[0, 0]
    # token 4 (the first segment's last) sees 2..4: not 5, 6 (the next segment), though within the window
    np.testing.assert_array_equal(np.flatnonzero(mask[4]), [2, 3, 4])
    np.testing.assert_array_equal(np.flatnonzero(mask[5]), [5, 6, 7])  # the second's first: 5..7
    np.testing.assert_array_equal(np.flatnonzero(mask[0]), [0, 1, 2])
    assert not mask[:, 8:].any()  # padding is never a key


def test_a_sliding_layer_sees_only_its_window():
    """One sliding-window layer (2 a side): changing a token 3 positions away leaves a
    token's output alone; changing one 2 away does not."""
    config = CONFIG.replace(num_hidden_layers=1, layer_types=("sliding_attention",))
    model = ModernBertModel(config)
    params = _params(model)
    ids = _sequences((12,))[0][None]

    apply = jax.jit(model.apply)

    def changed_at(position):
        other = ids.copy()
        other[0, position] = (other[0, position] + 1) % config.vocab_size
        a = apply({"params": params}, ids).last_hidden_state[0, 5]
        b = apply({"params": params}, other).last_hidden_state[0, 5]
        return float(jnp.abs(a - b).max())

    assert changed_at(8) == 0.0 and changed_at(2) == 0.0
    assert changed_at(7) > 1e-4 and changed_at(3) > 1e-4


@pytest.mark.parametrize("scan_layers", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_masked_positions_give_the_full_outputs_there(scan_layers):
    model = ModernBertForMaskedLM(CONFIG.replace(scan_layers=scan_layers))
    params = _params(model)
    ids = _sequences((14,), seed=2)[0][None]
    positions = np.array([[1, 6, 13]])
    full = jax.jit(model.apply)({"params": params}, ids)
    some = jax.jit(model.apply)({"params": params}, ids, masked_positions=positions)
    np.testing.assert_allclose(some.mlm_logits[0], full.mlm_logits[0, positions[0]], rtol=0, atol=2e-5)


def test_scanned_and_unrolled_layouts_compute_the_same():
    unrolled = ModernBertForMaskedLM(CONFIG)
    scanned = ModernBertForMaskedLM(CONFIG.replace(scan_layers=True))
    params = _params(unrolled)
    stacked = restack(params, scanned, scan_layers=True)
    assert set(stacked["model"]["layers"]) == {"layer_0", "layers"}  # layer 0 (no attn_norm) stays unrolled
    assert "attn_norm" not in stacked["model"]["layers"]["layer_0"]
    assert jax.tree.leaves(stacked["model"]["layers"]["layers"])[0].shape[0] == 2
    assert jax.tree.all(jax.tree.map(np.array_equal, restack(stacked, unrolled, scan_layers=False), params))
    ids = _sequences((10,))[0][None]
    np.testing.assert_allclose(jax.jit(scanned.apply)({"params": stacked}, ids).mlm_logits,
                               jax.jit(unrolled.apply)({"params": params}, ids).mlm_logits, rtol=0, atol=2e-5)


def test_config_json_spellings(tmp_path):
    fields = dict(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=8,
                  pad_token_id=0)
    # transformers' older spelling: global_rope_theta / local_rope_theta / global_attn_every_n_layers
    values = ModernBertConfig.hf_values({**fields, "global_rope_theta": 1e4, "local_rope_theta": 99.0,
                                         "global_attn_every_n_layers": 2}, "x/config.json")
    config = ModernBertConfig(**values)
    assert config.layer_types == ("full_attention", "sliding_attention") * 2
    assert (config.global_rope_theta, config.local_rope_theta) == (1e4, 99.0)
    written = config.hf_dict()
    assert written["rope_parameters"] == {"full_attention": {"rope_type": "default", "rope_theta": 1e4},
                                          "sliding_attention": {"rope_type": "default", "rope_theta": 99.0}}
    assert "global_rope_theta" not in written and written["layer_types"] == list(config.layer_types)
    assert ModernBertConfig(**ModernBertConfig.hf_values(written, "y")) == config
    with pytest.raises(InputError, match=r"x/config.json: rope_parameters.full_attention.rope_type 'yarn' is not "):
        ModernBertConfig.hf_values({"rope_parameters": {"full_attention": {"rope_type": "yarn"}}}, "x/config.json")
    with pytest.raises(InputError, match="model.layer_types names 2 layers but model.num_hidden_layers is 4"):
        ModernBertConfig(**fields, layer_types=("full_attention",) * 2)
    with pytest.raises(InputError, match="model.layer_types: 'chunked_attention' is not one of"):
        ModernBertConfig(**fields, layer_types=("chunked_attention",) * 4)
    with pytest.raises(InputError, match="model.classifier_pooling 'max'"):
        ModernBertConfig(**fields, classifier_pooling="max")


@pytest.mark.slow
def test_a_folder_of_the_old_config_spelling_loads(tmp_path):
    """A ModernBERT folder as the Hub holds them (written before rope_parameters) is read
    with its thetas and layer pattern."""
    from tests.hf_models import FAMILY_CONFIGS, padded_batch, save_random_hf_model, torch_outputs

    config = dict(FAMILY_CONFIGS["modernbert"]["global2_window4_cls"])
    config.pop("layer_types")
    torch_model = save_random_hf_model(tmp_path, "ModernBertForMaskedLM", {**config, "global_attn_every_n_layers": 2,
                                                                           "global_rope_theta": 321.0})
    import json

    saved = json.loads((tmp_path / "config.json").read_text())
    saved.pop("rope_parameters"), saved.pop("layer_types")
    saved.update(global_rope_theta=321.0, local_rope_theta=10000.0, global_attn_every_n_layers=2)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    model, params = hf.from_pretrained(tmp_path)
    assert model.config.layer_types == ("full_attention", "sliding_attention", "full_attention")
    assert model.config.global_rope_theta == 321.0
    batch = padded_batch(config)
    want = torch_outputs(torch_model, batch)["mlm_logits"]
    got = model.apply({"params": params}, **batch).mlm_logits
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_keys_per_query_and_flops_count_sliding_windows_at_their_cost():
    assert keys_per_query(8, None) == 8 and keys_per_query(8, 7) == 8
    # window 1 in a row of 4: 2, 3, 3, 2 keys
    assert keys_per_query(4, 1) == 2.5
    base = ModernBertConfig()
    assert base.layer_types.count("full_attention") == 8  # layers 0, 3, ..., 21
    flops = train_flops(base, 8, 1024, 307, False)
    all_global = train_flops(base.replace(layer_types=("full_attention",) * 22), 8, 1024, 307, False)
    d = base.hidden_size
    # 14 sliding layers (all at every row: the last layer, 21, is global) skip keys beyond +-64
    saved = 14 * 8 * 1024 * 12 * d * (1024 - keys_per_query(1024, 64))
    assert all_global - flops == pytest.approx(saved)
    assert family_named("modernbert").train_flops is train_flops
