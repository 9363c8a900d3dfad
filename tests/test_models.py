"""Model behaviour that transformers does not cover: packed segments, masked-only MLM
logits, attention dropout, logical axis names, remat."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxft.models import ARCHITECTURES, LOGICAL_AXES, BertConfig, BertForPreTraining, family_of, init_params
from flaxft.models.attention import Mask, attention, attention_with_dropout
from flaxft.models.dropout import dropout, random_bits16
from flaxft.models.layers import segment_positions
from flaxft.models.params import restack
from flaxft.models.roberta import RobertaConfig, RobertaForMaskedLM, RobertaModule, XLMRobertaForSequenceClassification

CONFIG = BertConfig(
    vocab_size=101, hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
    max_position_embeddings=32, type_vocab_size=2,
)


def _params(model, seed=0):
    return nn.meta.unbox(init_params(model, jax.random.key(seed)))


def test_segment_positions_restart_in_each_segment():
    segments = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(
        segment_positions(segments), [[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]]
    )


@pytest.mark.parametrize("scan_layers", [False, True])
def test_packed_row_gives_each_segment_its_own_outputs(scan_layers):
    """Two sequences packed in one row (plus padding) encode exactly as each one alone."""
    model = BertForPreTraining(CONFIG.replace(scan_layers=scan_layers))
    params = _params(model)
    rng = np.random.default_rng(0)
    a, b = rng.integers(5, 101, 7), rng.integers(5, 101, 6)
    types_a, types_b = np.r_[np.zeros(4, int), np.ones(3, int)], np.r_[np.zeros(2, int), np.ones(4, int)]
    packed = {
        "input_ids": np.r_[a, b, [0, 0, 0]][None],
        "token_type_ids": np.r_[types_a, types_b, [0, 0, 0]][None],
        "segment_ids": np.r_[np.ones(7, int), 2 * np.ones(6, int), [0, 0, 0]][None],
    }
    apply = jax.jit(model.apply)
    out = apply({"params": params}, **packed)
    for seq, types, start in ((a, types_a, 0), (b, types_b, 7)):
        alone = apply({"params": params}, seq[None], token_type_ids=types[None])
        got = out.last_hidden_state[0, start : start + len(seq)]
        np.testing.assert_allclose(got, alone.last_hidden_state[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(
            out.mlm_logits[0, start : start + len(seq)], alone.mlm_logits[0], rtol=0, atol=1e-5
        )
    # The first segment's [CLS] position is the row's pooled token.
    alone_a = apply({"params": params}, a[None], token_type_ids=types_a[None])
    np.testing.assert_allclose(out.pooler_output, alone_a.pooler_output, rtol=0, atol=1e-5)


@pytest.mark.parametrize("architecture", ["BertForPreTraining", pytest.param("BertForMaskedLM", marks=pytest.mark.slow)])
@pytest.mark.parametrize("scan_layers", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("packed", [False, True])
def test_masked_positions_give_the_full_outputs_there(architecture, scan_layers, packed):
    """With masked_positions the last layer computes only those rows (and the pooled first
    token): logits, hidden states and NSP equal the full computation's at those positions,
    with padding keys and packed segments (a query-dependent mask) too."""
    model = ARCHITECTURES[architecture](CONFIG.replace(scan_layers=scan_layers))
    params = _params(model)
    ids = np.random.default_rng(1).integers(0, 101, (3, 16))
    positions = np.array([[0, 5, 9, 15], [1, 2, 3, 0], [7, 7, 8, 14]])
    inputs = {"attention_mask": (np.arange(16) < np.array([[16], [12], [15]])).astype(np.int32)}
    if packed:
        inputs = {"segment_ids": np.repeat([[1, 1, 2, 3], [1, 2, 2, 0], [1, 1, 1, 2]], 4, axis=1)}
    full = model.apply({"params": params}, ids, **inputs)
    masked = model.apply({"params": params}, ids, **inputs, masked_positions=positions)
    assert masked.mlm_logits.shape == (3, 4, 101) and masked.last_hidden_state.shape == (3, 4, 24)
    at = lambda x: np.take_along_axis(np.asarray(x), positions[..., None], 1)  # noqa: E731
    np.testing.assert_allclose(masked.mlm_logits, at(full.mlm_logits), rtol=0, atol=1e-5)
    np.testing.assert_allclose(masked.last_hidden_state, at(full.last_hidden_state), rtol=0, atol=1e-5)
    if architecture == "BertForPreTraining":
        np.testing.assert_allclose(masked.nsp_logits, full.nsp_logits, rtol=0, atol=1e-5)
        np.testing.assert_allclose(masked.pooler_output, full.pooler_output, rtol=0, atol=1e-5)


def test_dropout_drops_the_configured_rate_unbiased():
    x = jnp.ones((400, 1000))
    for rate in (0.1, 0.5, 0.9):
        y = dropout(x, rate, jax.random.key(0))
        assert abs(float((y == 0).mean()) - rate) < 0.004, rate
        assert abs(float(y.mean()) - 1.0) < 0.01, rate
    np.testing.assert_array_equal(dropout(x, 0.0, jax.random.key(0)), x)
    np.testing.assert_array_equal(dropout(x, 0.1, jax.random.key(1)), dropout(x, 0.1, jax.random.key(1)))


@pytest.mark.parametrize("key", [jax.random.key(7), jax.random.PRNGKey(7), jax.random.key(7, impl="rbg")],
                         ids=["typed", "raw", "rbg"])
def test_random_bits16_are_jax_random_bits(key):
    """The unrolled Threefry draws exactly jax.random.bits' numbers (and other key kinds
    fall back to jax.random), inside jit too."""
    primitives = {e.primitive.name for e in jax.make_jaxpr(random_bits16, static_argnums=1)(key, (2, 3)).jaxpr.eqns}
    assert ("random_bits" in primitives) == (jax.random.key_impl(key) != jax.random.key_impl(jax.random.key(0)))
    for shape in [(3, 5, 7), (2, 12, 16, 16)]:
        expected = jax.random.bits(key, shape, jnp.uint16)
        np.testing.assert_array_equal(random_bits16(key, shape), expected)
        np.testing.assert_array_equal(jax.jit(random_bits16, static_argnums=1)(key, shape), expected)


def test_heads_without_mlm_refuse_masked_positions():
    model = ARCHITECTURES["BertForSequenceClassification"](CONFIG)
    with pytest.raises(ValueError, match="no MLM head"):
        model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), masked_positions=jnp.zeros((1, 1), jnp.int32))


def test_attention_dropout_path():
    """Without dropout the explicit softmax path equals jax.nn.dot_product_attention; with
    it, probabilities really are dropped, reproducibly for one key."""
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 6, 4, 6)), jnp.float32) for _ in range(3))
    mask = jnp.asarray(rng.random((2, 1, 6, 6)) > 0.3) | jnp.eye(6, dtype=bool)

    def explicit(rate, key):
        return attention_with_dropout(q, k, v, mask, rate, key)

    fused = jax.nn.dot_product_attention(q, k, v, mask=mask)
    np.testing.assert_allclose(explicit(0.0, jax.random.key(0)), fused, rtol=0, atol=1e-6)
    dropped = explicit(0.5, jax.random.key(0))
    assert float(jnp.abs(dropped - fused).max()) > 1e-2
    np.testing.assert_array_equal(dropped, explicit(0.5, jax.random.key(0)))
    assert float(jnp.abs(dropped - explicit(0.5, jax.random.key(1))).max()) > 1e-2


def test_softmax_attention_equals_jax_dot_product_attention_and_its_gradients():
    """The hand-written backward pass gives autodiff's gradients, a query row that may see
    no key included (uniform probabilities, no gradient to its masked keys)."""
    rng = np.random.default_rng(3)
    q, k, v, g = (jnp.asarray(rng.normal(size=(2, 6, 4, 6)), jnp.float32) for _ in range(4))
    mask = np.asarray(rng.random((2, 1, 6, 6)) > 0.3) | np.eye(6, dtype=bool)
    mask[1, 0, 2] = False
    mask = jnp.asarray(mask)
    ours, vjp_ours = jax.vjp(lambda q, k, v: attention(q, k, v, Mask(mask), 0.0, None), q, k, v)
    ref, vjp_ref = jax.vjp(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask), q, k, v)
    np.testing.assert_array_equal(ours, ref)
    for mine, theirs in zip(vjp_ours(g), vjp_ref(g)):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6)


def test_attention_with_dropout_draws_the_explicit_paths_mask_and_its_gradients():
    """On CPU `attention` with dropout takes the hand-written heads-first path: the same
    dropout draws, outputs and gradients as autodiff of `attention_with_dropout`."""
    rng = np.random.default_rng(4)
    q, k, v, g = (jnp.asarray(rng.normal(size=(2, 8, 4, 6)), jnp.float32) for _ in range(4))
    mask = jnp.asarray(rng.random((2, 1, 8, 8)) > 0.3) | jnp.eye(8, dtype=bool)
    key = jax.random.key(5)
    ours, vjp_ours = jax.vjp(lambda q, k, v: attention(q, k, v, Mask(mask), 0.3, key), q, k, v)
    ref, vjp_ref = jax.vjp(lambda q, k, v: attention_with_dropout(q, k, v, mask, 0.3, key), q, k, v)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    assert float(jnp.abs(ours - attention(q, k, v, Mask(mask), 0.0, None)).max()) > 1e-2
    for mine, theirs in zip(vjp_ours(g), vjp_ref(g)):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-5)


def test_materialized_cotangent_is_the_identity_both_ways():
    from flaxft.models.layers import materialized_cotangent

    x = jnp.asarray([-2.5, 0.0, 1e-30, 3e38], jnp.float32)
    g = jnp.asarray([1.0, -0.0, 7e-39, -3e38], jnp.float32)
    y, vjp = jax.vjp(materialized_cotangent, x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(jax.jit(vjp)(g)[0], g)


def test_training_mode_uses_dropout_and_eval_does_not():
    model = BertForPreTraining(CONFIG)
    params = _params(model)
    ids = jnp.ones((2, 8), jnp.int32)
    eval_a = model.apply({"params": params}, ids)
    eval_b = model.apply({"params": params}, ids)
    np.testing.assert_array_equal(eval_a.mlm_logits, eval_b.mlm_logits)
    train = model.apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(3)})
    assert float(jnp.abs(train.mlm_logits - eval_a.mlm_logits).max()) > 1e-3


def test_every_parameter_has_logical_axis_names():
    """Of every head of every family, in both layer layouts."""
    sizes = {f.name: getattr(CONFIG, f.name) for f in dataclasses.fields(CONFIG) if f.name in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "max_position_embeddings")}
    for scan_layers in (False, True):
        for name, cls in ARCHITECTURES.items():
            config_class = family_of(name).config_class
            model = cls(config_class(**sizes, scan_layers=scan_layers))
            declared = set(family_of(model).logical_axes)
            assert declared <= set(LOGICAL_AXES), declared
            boxed = jax.eval_shape(lambda m=model: init_params(m, jax.random.key(0)))
            leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
            for leaf in leaves:
                assert isinstance(leaf, nn.Partitioned), name
                assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= declared, leaf.names
                assert ("layers" in leaf.names) == (scan_layers and leaf.value.ndim > 0 and leaf.names[0] == "layers")


@pytest.mark.slow
@pytest.mark.parametrize("remat_policy", ["full", "dots", "dots_no_batch"])
def test_remat_and_scan_keep_gradients(remat_policy):
    """Rematerialised and scanned layers give the unrolled layers' loss gradients."""
    base = BertForPreTraining(CONFIG)
    params = _params(base)
    ids = np.random.default_rng(4).integers(0, 101, (2, 10))

    def loss(model, p):
        return jnp.mean(model.apply({"params": p}, ids).mlm_logits ** 2)

    want = jax.grad(lambda p: loss(base, p))(params)
    scanned = BertForPreTraining(CONFIG.replace(scan_layers=True, remat_policy=remat_policy))
    got = jax.grad(lambda p: loss(scanned, p))(restack(params, scanned, True))
    got = restack(got, base, False)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = BertForPreTraining(CONFIG.replace(dtype="bfloat16"))
    params = _params(model)
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    out = model.apply({"params": params}, jnp.ones((1, 8), jnp.int32))
    assert out.last_hidden_state.dtype == jnp.bfloat16
    assert out.mlm_logits.dtype == jnp.float32 and out.nsp_logits.dtype == jnp.float32
    f32 = BertForPreTraining(CONFIG).apply({"params": params}, jnp.ones((1, 8), jnp.int32))
    np.testing.assert_allclose(out.mlm_logits, f32.mlm_logits, atol=0.1)


def test_config_rejects_bad_values():
    from flaxft.errors import InputError

    with pytest.raises(InputError, match="divisible"):
        CONFIG.replace(hidden_size=25)
    with pytest.raises(InputError, match="hidden_act"):
        CONFIG.replace(hidden_act="swiglu")
    with pytest.raises(InputError, match="attention_probs_dropout_prob"):
        CONFIG.replace(attention_probs_dropout_prob=1.0)
    with pytest.raises(InputError, match="classifier_dropout"):
        CONFIG.replace(classifier_dropout=-0.1)
    with pytest.raises(InputError, match="unknown model config"):
        BertConfig.from_dict({**CONFIG.to_dict(), "hiddn_size": 3})
    assert BertConfig.from_dict(CONFIG.to_dict()) == CONFIG


ROBERTA = RobertaConfig(vocab_size=101, hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=40, max_position_embeddings=40, pad_token_id=1, num_labels=3)


def test_roberta_positions_start_after_the_padding_index_and_restart_per_segment():
    module = RobertaModule(ROBERTA, add_pooling_layer=False)
    ids = jnp.array([[0, 7, 1, 9, 2, 1, 1]])  # a pad id (1) inside the row counts as padding, as in transformers
    positions = module.apply({}, ids, None, method=RobertaModule.default_position_ids)
    np.testing.assert_array_equal(positions, [[2, 3, 1, 4, 5, 1, 1]])
    segments = jnp.array([[1, 1, 1, 2, 2, 0, 0]])
    positions = module.apply({}, ids, segments, method=RobertaModule.default_position_ids)
    np.testing.assert_array_equal(positions, [[2, 3, 4, 2, 3, 1, 1]])


def test_packed_roberta_rows_give_each_segment_its_own_outputs():
    """Two sequences packed in one row encode, score the vocabulary and classify (on each
    segment's first token) exactly as each one alone."""
    rng = np.random.default_rng(3)
    a, b = rng.integers(3, 101, 7), rng.integers(3, 101, 5)
    packed = {"input_ids": np.r_[a, b, [1, 1]][None], "segment_ids": np.r_[np.ones(7, int), 2 * np.ones(5, int), [0, 0]][None]}
    for model in (RobertaForMaskedLM(ROBERTA), XLMRobertaForSequenceClassification(ROBERTA)):
        params = _params(model)
        apply = jax.jit(model.apply)
        if isinstance(model, RobertaForMaskedLM):
            out = apply({"params": params}, **packed)
            for seq, start in ((a, 0), (b, 7)):
                alone = apply({"params": params}, seq[None])
                np.testing.assert_allclose(out.mlm_logits[0, start:start + len(seq)], alone.mlm_logits[0], atol=1e-5)
        else:
            out = apply({"params": params}, **packed, cls_positions=np.array([[0, 7]]))
            assert out.logits.shape == (1, 2, 3)
            for k, seq in enumerate((a, b)):
                np.testing.assert_allclose(out.logits[0, k], apply({"params": params}, seq[None]).logits[0], atol=1e-5)
