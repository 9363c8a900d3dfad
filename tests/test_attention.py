"""model.attention: every implementation equals "xla" on padded rows, packed rows and (where
supported) sliding windows, forward and gradients; "auto" resolves per backend and config;
invalid combinations are InputErrors naming the fields; tiny runs train with each."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxft import config as config_lib
from flaxft import train
from flaxft.errors import InputError
from flaxft.models import family_named
from flaxft.models.attention import (
    attention,
    attention_heads_first,
    attention_masks,
    describe_attention,
    resolve_attention,
    splash_attention,
)
from flaxft.models.modernbert.encoder import sliding_window_mask
from tests.test_cli import run
from tests.tiny import losses, tiny_config, write_corpus

B, L, N, H = 2, 12, 2, 8
# Row 0 fills 12 tokens, row 1 is padded after 7; packed: three segments and padding.
LENGTHS = (L, 7)
SEGMENTS = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3], [1, 1, 1, 2, 2, 2, 2, 0, 0, 0, 0, 0]])


def qkv_and_cotangent(seed: int = 0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(B, L, N, H)), jnp.float32) for _ in range(4))


def masks(kind: str):
    """(Mask, real query rows [B, L]) of a batch: "padded", "packed" or "window" (packed,
    3 tokens a side)."""
    if kind == "padded":
        real = np.arange(L)[None, :] < np.array(LENGTHS)[:, None]
        return attention_masks(jnp.asarray(real, jnp.int32), None), real
    real = SEGMENTS > 0
    mask = attention_masks(jnp.asarray(real, jnp.int32), jnp.asarray(SEGMENTS))
    return (sliding_window_mask(mask, L, 3) if kind == "window" else mask), real


def outputs_and_grads(fn, real):
    """fn(q, k, v) [B, L, N, H] on random operands, and the gradients wrt q, k, v of the
    sum of its real query rows times a random cotangent (padding rows never count)."""
    q, k, v, g = qkv_and_cotangent()
    weight = jnp.asarray(real, jnp.float32)[:, :, None, None]
    out = fn(q, k, v)
    grads = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * g * weight), argnums=(0, 1, 2))(q, k, v)
    return out, grads


def max_differences(fn, kind: str) -> list[float]:
    """Max abs differences to "xla" of fn's real output rows and of its q, k, v gradients."""
    mask, real = masks(kind)
    ref, ref_grads = outputs_and_grads(lambda q, k, v: attention(q, k, v, mask, 0.0, None, "xla"), real)
    out, grads = outputs_and_grads(fn, real)
    assert all(bool(jnp.isfinite(x).all()) for x in (out, *grads))  # padding rows too
    return [float(jnp.abs(out - ref)[real].max())] + [float(jnp.abs(a - b).max()) for a, b in zip(grads, ref_grads)]


IMPLEMENTATIONS = {  # through `attention` ("flash" on CPU: the Pallas GPU kernel in interpret mode), or splash
    "dot_product": lambda mask: lambda q, k, v: attention(q, k, v, mask, 0.0, None, "dot_product"),
    "flash": lambda mask: lambda q, k, v: attention(q, k, v, mask, 0.0, None, "flash"),
    "flash heads first": lambda mask: lambda q, k, v: jnp.swapaxes(attention_heads_first(
        *(jnp.swapaxes(x, 1, 2) for x in (q, k, v)), mask, 0.0, None, "flash"), 1, 2),
    "splash kernel": lambda mask: lambda q, k, v: splash_attention(q, k, v, mask.segment_ids_BL, interpret=True),
}


@pytest.mark.parametrize("kind", ["padded", "packed"])
@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_every_implementation_equals_xla(name, kind):
    differences = max_differences(IMPLEMENTATIONS[name](masks(kind)[0]), kind)
    print(f"{name} {kind}: max abs difference out, dq, dk, dv = " + ", ".join(f"{d:.1e}" for d in differences))
    assert max(differences) < 1e-4, differences


def test_dot_product_equals_xla_with_sliding_windows():
    differences = max_differences(IMPLEMENTATIONS["dot_product"](masks("window")[0]), "window")
    print("dot_product window: max abs difference out, dq, dk, dv = " + ", ".join(f"{d:.1e}" for d in differences))
    assert max(differences) < 1e-4, differences


def test_flash_gives_gathered_query_rows_to_dot_product():
    """The last layer's gathered query rows (no segment ids) take "dot_product": the same
    rows as full attention."""
    from flaxft.models.attention import gather_query_rows

    mask, _ = masks("packed")
    q, k, v, _ = qkv_and_cotangent()
    positions = jnp.asarray([[0, 5, 9], [2, 3, 6]])
    rows = gather_query_rows(mask, positions)
    assert rows.segment_ids_BL is None
    gathered = attention(jnp.take_along_axis(q, positions[:, :, None, None], axis=1), k, v, rows, 0.0, None, "flash")
    full = attention(q, k, v, mask, 0.0, None, "xla")
    np.testing.assert_allclose(gathered, jnp.take_along_axis(full, positions[:, :, None, None], axis=1), atol=1e-5)


@pytest.mark.parametrize(
    "implementation, training_dropout, backend, windowed, expected",
    [
        ("auto", True, "gpu", False, "xla"),  # attention dropout in training: only xla applies it
        ("auto", True, "tpu", False, "xla"),
        ("auto", False, "cpu", False, "xla"),  # the fastest on CPU
        ("auto", False, "gpu", False, "dot_product"),
        ("auto", False, "gpu", True, "dot_product"),
        ("auto", False, "tpu", False, "flash"),
        ("auto", False, "tpu", True, "dot_product"),  # flash has no sliding windows
        ("dot_product", False, "cpu", False, "dot_product"),  # explicit choices stay
        ("xla", False, "gpu", False, "xla"),
        ("flash", False, "cpu", False, "flash"),
    ],
)
def test_auto_resolution(implementation, training_dropout, backend, windowed, expected):
    assert resolve_attention(implementation, training_dropout, backend, windowed) == expected


def test_the_start_up_line_says_what_auto_picked_and_why():
    assert describe_attention("auto", 0.0, "cpu", False) == "xla (model.attention auto on cpu)"
    assert describe_attention("auto", 0.1, "gpu", False) == \
        "xla in training (attention dropout 0.1), dot_product in evaluation (model.attention auto on gpu)"
    assert describe_attention("flash", 0.0, "gpu", False) == "flash"
    config = config_lib.model_config(config_lib.default_config())
    assert config.attention == "auto" and config.attention_line() == "xla (model.attention auto on cpu)"


def bert_config(**model):
    config = config_lib.default_config()
    config.num_train_steps = 10
    config.model.update(model)
    return config


def modernbert_config(**model):
    config = bert_config()
    config.model = config_lib.model_defaults("modernbert")
    config.model.update(model)
    return config


@pytest.mark.parametrize(
    "config, fields",
    [
        (bert_config(attention="dot_product"), ("model.attention 'dot_product'", "model.attention_probs_dropout_prob")),
        (bert_config(attention="flash"), ("model.attention 'flash'", "model.attention_probs_dropout_prob")),
        (modernbert_config(attention="flash", attention_dropout=0.1), ("model.attention", "model.attention_dropout")),
        (modernbert_config(attention="flash"), ("model.attention 'flash'", "model.layer_types",
                                                "model.local_attention")),
        (bert_config(attention="cudnn"), ("model.attention 'cudnn'",)),
    ],
)
def test_invalid_combinations_name_the_fields(config, fields):
    with pytest.raises(InputError) as info:
        config_lib.validate(config)
    message = str(info.value)
    assert "\n" not in message and all(field in message for field in fields), message


def test_valid_combinations():
    for config in (
        bert_config(attention="dot_product", attention_probs_dropout_prob=0.0),
        bert_config(attention="flash", attention_probs_dropout_prob=0.0),
        bert_config(attention="xla"),
        modernbert_config(attention="flash", layer_types=["full_attention"] * 22),
        modernbert_config(attention="dot_product"),
    ):
        config_lib.validate(config)


def test_every_family_defaults_to_auto():
    for name in ("bert", "roberta", "electra", "modernbert"):
        assert config_lib.model_defaults(name).attention == "auto"
        assert "attention" in family_named(name).config_class.TRAINING_OPTIONS


def tiny_models(family: str, attention: str, layer_types=None):
    """A tiny masked-LM model of `family` with `attention` (no dropout)."""
    cls = family_named(family).config_class
    fields = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=32, attention=attention)
    if family == "modernbert":
        fields.update(layer_types=layer_types, local_attention=6, pad_token_id=0)
    else:
        fields.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = family_named(family).architecture("masked_lm")(cls(**fields))
    return model


@pytest.mark.parametrize(
    "family, attention, layer_types",
    [
        ("bert", "flash", None),
        ("bert", "dot_product", None),
        ("modernbert", "flash", ("full_attention", "full_attention")),
        ("modernbert", "dot_product", ("full_attention", "sliding_attention")),
    ],
)
def test_a_model_gives_xla_s_outputs_with_each_implementation(family, attention, layer_types):
    """Whole models (the last layer's gathered query rows included) on a packed and padded
    batch: the real tokens' MLM logits match "xla"'s."""
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 50, size=(B, L)))
    segments = jnp.asarray(SEGMENTS)
    ours, ref = tiny_models(family, attention, layer_types), tiny_models(family, "xla", layer_types)
    params = ref.init(jax.random.key(0), ids)["params"]
    positions = jnp.asarray([[0, 5, 9], [2, 3, 6]])
    for kwargs in (dict(segment_ids=segments), dict(segment_ids=segments, masked_positions=positions)):
        out = ours.apply({"params": params}, ids, **kwargs).mlm_logits
        expected = ref.apply({"params": params}, ids, **kwargs).mlm_logits
        real = (segments > 0) if out.shape[1] == L else jnp.ones(out.shape[:2], bool)
        assert bool(jnp.isfinite(out).all())
        np.testing.assert_allclose(out[real], expected[real], rtol=0, atol=1e-4)


def test_cli_dot_product_with_attention_dropout_exits_2_and_writes_nothing(tmp_path):
    """configs/pretrain_tiny.py trains without attention dropout: BERT's 0.1 is asked for."""
    work = tmp_path / "work"
    result = run("-m", "flaxft.main", "--config", "configs/pretrain_tiny.py", "--workdir", str(work),
                 "--config.model.attention=dot_product", "--config.model.attention_probs_dropout_prob=0.1")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.attention" in lines[0] and "model.attention_probs_dropout_prob" in lines[0]
    assert not work.exists()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), documents=200)


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["dot_product", "flash"])
def test_tiny_pretraining_trains_with(attention, corpus, tmp_path, capsys):
    config = tiny_config(corpus, num_train_steps=12, log_every_steps=2, eval_every_steps=12,
                         checkpoint_every_steps=12, **{"model.attention": attention,
                                                       "model.attention_probs_dropout_prob": 0.0})
    last = train.run(config, str(tmp_path))
    assert f"attention {attention};" in capsys.readouterr().out
    run_losses = losses(tmp_path)
    assert all(math.isfinite(x) for x in run_losses) and math.isfinite(last["eval_loss"])
    assert run_losses[-1] < run_losses[0], run_losses


def test_a_resume_may_change_the_attention_implementation(tmp_path):
    """A checkpoint's model record with another model.attention (or none, written before the
    key existed) fits the resuming model; another width does not."""
    from flaxft.checkpoint import _check_same_model, model_record

    saved = model_record(tiny_models("bert", "xla"))
    _check_same_model(saved, tiny_models("bert", "dot_product"), tmp_path)
    del saved["config"]["attention"]
    _check_same_model(saved, tiny_models("bert", "flash"), tmp_path)
    saved["config"]["hidden_size"] = 32
    with pytest.raises(InputError, match="hidden_size"):
        _check_same_model(saved, tiny_models("bert", "flash"), tmp_path)
