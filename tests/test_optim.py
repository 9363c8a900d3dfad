"""The fused AdamW against optax's clip + adamw chain, step by step; the learning-rate
schedules against their formulas and the config rules that guard them; layer-wise
learning-rate decay per family against hand-made tables; which parameters train."""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from flaxft import config as config_lib
from flaxft import optim
from flaxft.errors import InputError
from flaxft.models import abstract_params, family_named
from tests.tiny import set_dotted


def _tree(rng, scale=1.0):
    return {
        "layer": {"kernel": jnp.asarray(rng.normal(size=(6, 5)) * scale, jnp.float32),
                  "bias": jnp.asarray(rng.normal(size=(5,)) * scale, jnp.float32)},
        "LayerNorm": {"scale": jnp.asarray(1 + rng.normal(size=(5,)) * scale, jnp.float32)},
    }


@pytest.mark.parametrize("clip_norm, grad_scale", [(1.0, 1.0), (1.0, 1e-3), (0.0, 1.0)])
def test_fused_adamw_matches_optax(clip_norm, grad_scale):
    """Clipping active (large gradients) and inactive (small), and no clipping: params and
    moments track optax's chain within float32 rounding for 6 steps of a warmup schedule,
    weight decay only on kernels."""
    rng = np.random.default_rng(0)
    schedule = optax.linear_schedule(0.0, 1e-2, 3)
    kwargs = dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, mask=optim.weight_decay_mask)
    reference = optax.adamw(schedule, **kwargs)
    if clip_norm > 0:
        reference = optax.chain(optax.clip_by_global_norm(clip_norm), reference)
    fused = optim.fused_adamw(schedule, clip_norm=clip_norm, **kwargs)
    params_ref = params_fused = _tree(rng)
    state_ref, state_fused = reference.init(params_ref), fused.init(params_fused)
    for _ in range(6):
        grads = _tree(rng, 3.0 * grad_scale)
        updates, state_ref = jax.jit(reference.update)(grads, state_ref, params_ref)
        params_ref = optax.apply_updates(params_ref, updates)
        updates, state_fused = jax.jit(fused.update)(grads, state_fused, params_fused)
        params_fused = optax.apply_updates(params_fused, updates)
    adam_ref = state_ref[1][0] if clip_norm > 0 else state_ref[0]
    for got, want in [(params_fused, params_ref), (state_fused.mu, adam_ref.mu), (state_fused.nu, adam_ref.nu)]:
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-7)
    assert int(state_fused.count) == 6
    # Weight decay reached kernels only: with zero gradients a bias stays put.
    zero = jax.tree.map(jnp.zeros_like, params_fused)
    fresh = fused.init(params_fused)
    updates, _ = fused.update(zero, fresh._replace(count=jnp.asarray(5, jnp.int32)), params_fused)
    assert float(jnp.abs(updates["layer"]["bias"]).max()) == 0.0
    assert float(jnp.abs(updates["layer"]["kernel"]).max()) > 0.0


def _schedule_config(**overrides):
    config = config_lib.default_config()
    config.update(num_train_steps=20, learning_rate=1e-3, end_learning_rate=1e-5, warmup_steps=4)
    config.update(overrides)
    return config


def _wsd_reference(step, *, warmup, decay_steps, total, peak=1e-3, end=1e-5):
    """Warmup-stable-decay written out: linear warmup, peak, then Hägele et al.'s 1-sqrt cooldown
    over the last decay_steps, end_learning_rate from num_train_steps on."""
    if step < warmup:
        return peak * step / warmup
    if step < total - decay_steps:
        return peak
    t = min(step - (total - decay_steps), decay_steps) / decay_steps
    return end + (peak - end) * (1 - np.sqrt(t))


@pytest.mark.parametrize("warmup, decay_steps", [(4, 6), (0, 6), (4, 16), (0, 20), (1, 1)],
                         ids=["warmup-stable-decay", "no-warmup", "no-stable", "decay-only", "one-step-each"])
def test_wsd_schedule_matches_its_formula(warmup, decay_steps):
    config = _schedule_config(lr_schedule="wsd", warmup_steps=warmup, decay_steps=decay_steps)
    config_lib.validate(config)
    schedule = jax.jit(optim.learning_rate_schedule(config))
    steps = range(config.num_train_steps + 3)
    got = [float(schedule(jnp.asarray(s, jnp.int32))) for s in steps]
    want = [_wsd_reference(s, warmup=warmup, decay_steps=decay_steps, total=20) for s in steps]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    # The shape the recipe asks for: peak held until the decay, which starts at the peak and
    # lands on end_learning_rate exactly at num_train_steps.
    start = 20 - decay_steps
    assert got[start] == pytest.approx(1e-3) and got[20] == pytest.approx(1e-5) and got[-1] == got[20]
    if start > warmup:
        assert got[warmup:start] == [pytest.approx(1e-3)] * (start - warmup)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_linear_and_cosine_schedules_are_unchanged(name):
    """Bit for bit the construction they always had (warmup joined to optax's decay)."""
    config = _schedule_config(lr_schedule=name)
    decay = (optax.cosine_decay_schedule(1e-3, 16, alpha=1e-5 / 1e-3) if name == "cosine"
             else optax.linear_schedule(1e-3, 1e-5, 16))
    reference = optax.join_schedules([optax.linear_schedule(0.0, 1e-3, 4), decay], [4])
    schedule = optim.learning_rate_schedule(config)
    for step in range(24):
        assert float(schedule(step)) == float(reference(step)), step


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lr_schedule": "wsd"}, r"config.decay_steps must be positive with config.lr_schedule 'wsd'"),
        ({"lr_schedule": "wsd", "decay_steps": -2}, r"config.decay_steps must be positive"),
        ({"lr_schedule": "wsd", "decay_steps": 17}, r"config.warmup_steps \(4\) \+ config.decay_steps \(17\) "
                                                    r"exceed config.num_train_steps \(20\)"),
        ({"decay_steps": 5}, r"config.decay_steps \(5\) is for config.lr_schedule 'wsd'; 'linear'"),
        ({"lr_schedule": "cosine", "decay_steps": 5}, r"config.decay_steps \(5\) is for config.lr_schedule 'wsd'"),
    ],
)
def test_wsd_config_rules(values, message):
    with pytest.raises(InputError, match=message):
        config_lib.validate(_schedule_config(**values))


def test_wsd_longer_than_a_fine_tuning_run_is_an_input_error():
    """Fine-tuning by task.epochs learns num_train_steps after validation: the schedule checks."""
    config = _schedule_config(lr_schedule="wsd", decay_steps=10, num_train_steps=0)
    config.task.update(name="classification", epochs=1.0)
    config_lib.validate(config)
    config.num_train_steps = 12  # what setup computed from task.epochs
    with pytest.raises(InputError, match=r"config.warmup_steps \(4\) \+ decay_steps <= config.num_train_steps"):
        optim.learning_rate_schedule(config)


def _leaves(tree) -> dict:
    return {jax.tree_util.keystr(path): np.asarray(leaf, np.float64)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _stable_adamw_reference(params, grads_per_step, schedule, *, b1, b2, eps, weight_decay, clip_norm,
                            stable=True, peak_learning_rate=0.0):
    """Wortsman et al. (2023), Algorithm 2 as printed, in float64 numpy, after global-norm
    clipping: moments with debiased betas b_hat = b (1 - b^(t-1)) / (1 - b^t),
    RMS_t = sqrt(mean(g_t^2 / max(u_t, eps^2))) per tensor, eta_t = alpha_t / max(1, RMS_t),
    theta_t = theta_(t-1) - eta_t lambda theta_(t-1) - eta_t v_t / (sqrt(u_t) + eps), no
    decay on biases and LayerNorm scales. Returns the final params (by path) and each
    step's per-tensor factors 1 / max(1, RMS_t). stable=False: plain AdamW (eta_t = alpha_t);
    peak_learning_rate > 0: decoupled decay, lambda eta_t / peak_learning_rate instead."""
    theta = _leaves(params)
    first = {k: np.zeros_like(p) for k, p in theta.items()}  # the paper's v_t
    second = {k: np.zeros_like(p) for k, p in theta.items()}  # the paper's u_t
    factors = []
    for t, grads in enumerate(grads_per_step, start=1):
        g = _leaves(grads)
        if clip_norm > 0:
            norm = np.sqrt(sum((x * x).sum() for x in g.values()))
            g = {k: x * min(1.0, clip_norm / norm) for k, x in g.items()}
        b1_hat = b1 * (1 - b1 ** (t - 1)) / (1 - b1**t)
        b2_hat = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
        alpha = float(schedule(t - 1))
        factors.append({})
        for k in theta:
            first[k] = b1_hat * first[k] + (1 - b1_hat) * g[k]
            second[k] = b2_hat * second[k] + (1 - b2_hat) * g[k] ** 2
            rms = np.sqrt(np.mean(g[k] ** 2 / np.maximum(second[k], eps**2)))
            factors[-1][k] = 1 / max(1.0, rms) if stable else 1.0
            eta = alpha * factors[-1][k]
            decay = weight_decay if k.split("'")[-2] not in optim.NO_DECAY_LEAVES else 0.0
            if peak_learning_rate > 0:
                decay = decay / peak_learning_rate
            theta[k] = theta[k] - eta * decay * theta[k] - eta * first[k] / (np.sqrt(second[k]) + eps)
    return theta, factors


def _run(tx, params, grads_per_step):
    state = tx.init(params)
    for grads in grads_per_step:
        updates, state = jax.jit(tx.update)(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


STABLE = dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, mask=optim.weight_decay_mask)


@pytest.mark.parametrize("clip_norm", [0.0, 10.0])
def test_stable_adamw_scales_down_a_gradient_spike_like_the_paper(clip_norm):
    """Steady gradients, then a spike on the kernel (30x) at step 5: its update is clipped
    (the scale drops below 1 there), the other tensors' are not, and the fused update follows
    the paper's algorithm over all 7 steps; plain AdamW moves the kernel differently."""
    rng = np.random.default_rng(1)
    schedule = optax.linear_schedule(0.0, 1e-2, 3)
    params = _tree(rng)
    grads_per_step = [_tree(rng, 0.1) for _ in range(7)]
    grads_per_step[4]["layer"]["kernel"] = grads_per_step[4]["layer"]["kernel"] * 30
    want, factors = _stable_adamw_reference(params, grads_per_step, schedule, clip_norm=clip_norm,
                                            **{k: v for k, v in STABLE.items() if k != "mask"})
    kernel = "['layer']['kernel']"
    assert factors[4][kernel] < 0.5, factors[4]  # the clipping this test is about happened
    assert factors[4]["['layer']['bias']"] == 1.0 and factors[0][kernel] == 1.0  # and only there
    got = _run(optim.fused_adamw(schedule, clip_norm=clip_norm, stable=True, **STABLE), params, grads_per_step)
    for key, value in _leaves(got).items():
        np.testing.assert_allclose(value, want[key], rtol=1e-6, atol=1e-7, err_msg=key)
    plain = _run(optim.fused_adamw(schedule, clip_norm=clip_norm, **STABLE), params, grads_per_step)
    assert np.abs(_leaves(plain)[kernel] - want[kernel]).max() > 1e-3


def test_stable_adamw_without_a_spike_is_adamw():
    """Gradients that shrink step by step (clipping on, not binding) never outgrow their second
    moment: RMS_t <= 1 on every tensor at every step, and StableAdamW is AdamW bit for bit
    (and the paper's algorithm too)."""
    rng = np.random.default_rng(2)
    schedule = optax.linear_schedule(0.0, 1e-2, 3)
    params = _tree(rng)
    grads_per_step = [jax.tree.map(lambda p, s=step: jnp.asarray(rng.normal(size=p.shape) * 0.5**s, jnp.float32),
                                   params) for step in range(6)]
    want, factors = _stable_adamw_reference(params, grads_per_step, schedule, clip_norm=100.0,
                                            **{k: v for k, v in STABLE.items() if k != "mask"})
    assert all(f == 1.0 for step in factors for f in step.values()), factors
    got = _run(optim.fused_adamw(schedule, clip_norm=100.0, stable=True, **STABLE), params, grads_per_step)
    plain = _run(optim.fused_adamw(schedule, clip_norm=100.0, **STABLE), params, grads_per_step)
    for key, value in _leaves(got).items():
        np.testing.assert_array_equal(value, _leaves(plain)[key], err_msg=key)
        np.testing.assert_allclose(value, want[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_stable_adamw_from_the_config():
    """optimizer = "stable_adamw" validates and is fused_adamw(stable=True), with the config's
    clipping and hyperparameters; zero gradients on a fresh state stay finite (the eps^2 floor)."""
    config = _schedule_config(optimizer="stable_adamw", grad_clip_norm=0.5, weight_decay=0.05)
    config_lib.validate(config)
    rng = np.random.default_rng(3)
    params = _tree(rng)
    tx = optim.make_optimizer(config)
    direct = optim.fused_adamw(optim.learning_rate_schedule(config), b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.05,
                               mask=optim.weight_decay_mask, clip_norm=0.5, stable=True)
    state, direct_state = tx.init(params), direct.init(params)
    for _ in range(3):  # past warmup's first step, where the learning rate is 0
        grads = _tree(rng, 5.0)
        got, state = tx.update(grads, state, params)
        want, direct_state = direct.update(grads, direct_state, params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(g, w)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params)._replace(count=jnp.asarray(5, jnp.int32)), params)
    assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))
    assert float(jnp.abs(updates["layer"]["bias"]).max()) == 0.0


@pytest.mark.parametrize("stable", [False, True], ids=["adamw", "stable_adamw"])
def test_decoupled_weight_decay_matches_its_reference(stable):
    """p <- p - weight_decay * (lr_t / peak) * p on kernels (and the RMS scale with StableAdamW,
    which the spike at step 5 triggers), over 7 steps of warmup then cosine decay; the coupled
    form (lr_t * weight_decay) lands elsewhere."""
    rng = np.random.default_rng(4)
    peak = 1e-2
    schedule = optax.join_schedules([optax.linear_schedule(0.0, peak, 3), optax.cosine_decay_schedule(peak, 4)], [3])
    params = _tree(rng)
    grads_per_step = [_tree(rng, 0.1) for _ in range(7)]
    grads_per_step[4]["layer"]["kernel"] = grads_per_step[4]["layer"]["kernel"] * 30
    hyper = dict(STABLE, weight_decay=0.1)
    want, factors = _stable_adamw_reference(params, grads_per_step, schedule, clip_norm=1.0, stable=stable,
                                            peak_learning_rate=peak,
                                            **{k: v for k, v in hyper.items() if k != "mask"})
    assert (min(f for step in factors for f in step.values()) < 1.0) == stable
    tx = optim.fused_adamw(schedule, clip_norm=1.0, stable=stable, decoupled_weight_decay=True,
                           peak_learning_rate=peak, **hyper)
    got = _leaves(_run(tx, params, grads_per_step))
    for key, value in got.items():
        np.testing.assert_allclose(value, want[key], rtol=1e-6, atol=1e-7, err_msg=key)
    coupled = _leaves(_run(optim.fused_adamw(schedule, clip_norm=1.0, stable=stable, **hyper), params, grads_per_step))
    kernel = "['layer']['kernel']"
    assert np.abs(coupled[kernel] - got[kernel]).max() > 1e-2
    np.testing.assert_array_equal(coupled["['layer']['bias']"], got["['layer']['bias']"])  # no decay there


def test_decoupled_weight_decay_ignores_the_learning_rate_size():
    """At the peak rate a zero gradient decays a kernel by weight_decay * p whatever that rate
    is (coupled: by lr * weight_decay * p); half the peak, half the decay. From the config:
    decoupled_weight_decay with adamw and stable_adamw, an InputError with lamb."""
    params = _tree(np.random.default_rng(5))
    zero = jax.tree.map(jnp.zeros_like, params)
    kernel = params["layer"]["kernel"]
    for name in ("adamw", "stable_adamw"):
        config = _schedule_config(optimizer=name, decoupled_weight_decay=True, weight_decay=1e-2, warmup_steps=0,
                                  learning_rate=3e-4, end_learning_rate=0.0)
        config_lib.validate(config)
        tx = optim.make_optimizer(config)
        for step, fraction in ((0, 1.0), (10, 0.5)):  # linear decay over 20 steps: the peak, then half of it
            state = tx.init(params)._replace(count=jnp.asarray(step, jnp.int32))
            updates, _ = tx.update(zero, state, params)
            np.testing.assert_allclose(updates["layer"]["kernel"], -1e-2 * fraction * kernel, rtol=1e-6)
            assert float(jnp.abs(updates["layer"]["bias"]).max()) == 0.0
    with pytest.raises(InputError, match=r"config.decoupled_weight_decay is for config.optimizer 'adamw' or "
                                         r"'stable_adamw', not 'lamb'"):
        config_lib.validate(_schedule_config(optimizer="lamb", decoupled_weight_decay=True))
    with pytest.raises(ValueError, match="peak learning rate"):
        optim.fused_adamw(optax.constant_schedule(1e-3), decoupled_weight_decay=True, **STABLE)


@pytest.mark.slow
def test_modernbert_optimizer_recipe_trains_on_an_fsdp_mesh(tmp_path):
    """stable_adamw + wsd + decoupled weight decay through the real loop, parameters and
    moments split over 8 devices (StableAdamW's per-tensor mean spans the shards): the loss
    falls and the logged learning rate is the wsd schedule's."""
    from flaxft import report, train
    from tests.tiny import tiny_config, write_corpus

    config = tiny_config(write_corpus(tmp_path), **{
        "optimizer": "stable_adamw", "lr_schedule": "wsd", "decay_steps": 10, "decoupled_weight_decay": True,
        "weight_decay": 1e-5, "mesh.fsdp": 8})
    train.run(config, str(tmp_path / "run"))
    records = [r for r in report.read_metrics(tmp_path / "run") if "loss" in r]
    assert records[-1]["loss"] < records[0]["loss"] - 0.5, records
    for r in records:  # the rate logged at step s is the one its update used: schedule(s - 1)
        want = _wsd_reference(r["step"] - 1, warmup=5, decay_steps=10, total=30, peak=5e-3, end=0.0)
        assert r["learning_rate"] == pytest.approx(want, rel=1e-5, abs=1e-9), r


# ----------------------------------------------------------------------------- layer-wise decay, freezing


def _tiny_model(family: str, head: str, scan_layers: bool):
    """A tiny model of `family` with `head` (tests.tiny's sizes: BERT, RoBERTa and ELECTRA 2
    layers, ModernBERT 3)."""
    from tests import tiny

    factory = {"modernbert": tiny.tiny_modernbert_config, "electra": tiny.tiny_electra_config}.get(family,
                                                                                                   tiny.tiny_config)
    config = factory(Path("unused"))
    if family == "roberta":
        config.model = set_dotted(config_lib.model_defaults("roberta"), dict(config.model.items(), family="roberta"))
        config.model.pad_token_id = 1
    return family_named(family).architecture(head)(config_lib.model_config(config, scan_layers=scan_layers))


# Each family's depths by hand (ELECTRA's rule, L layers): parameters under a prefix sit at
# its depth; the longest prefix wins; a tuple is a scanned stack's depth per layer.
BERT_DEPTHS = {"bert/embeddings": 0, "bert/encoder/layer_0": 1, "bert/encoder/layer_1": 2,
               "bert/encoder/layers": (1, 2), "bert/pooler": 3, "classifier": 4}
HAND_DEPTHS = {
    ("bert", "sequence_classification"): BERT_DEPTHS,
    ("bert", "pretraining"): {**BERT_DEPTHS, "mlm": 4, "nsp": 4},
    ("roberta", "sequence_classification"): {k.replace("bert/", "roberta/"): v for k, v in BERT_DEPTHS.items()},
    ("electra", "sequence_classification"): {
        "electra/embeddings": 0, "electra/embeddings_project": 0, "electra/encoder/layer_0": 1,
        "electra/encoder/layer_1": 2, "electra/encoder/layers": (1, 2), "classifier": 4},
    ("electra", "pretraining"): {  # the generator's layers count like the discriminator's
        "electra/embeddings": 0, "electra/embeddings_project": 0, "electra/encoder/layer_0": 1,
        "electra/encoder/layer_1": 2, "generator/electra/encoder/layer_0": 1, "generator/electra/encoder/layer_1": 2,
        "generator": 4, "discriminator_predictions": 4},
    ("modernbert", "sequence_classification"): {  # layer 0 stays unrolled when scanned
        "model/embeddings": 0, "model/layers/layer_0": 1, "model/layers/layer_1": 2, "model/layers/layer_2": 3,
        "model/layers/layers": (2, 3), "model/final_norm": 4, "prediction_head": 4, "classifier": 5},
}


def _hand_depth(table: dict, path: str):
    prefix = max((p for p in table if path.startswith(p + "/")), key=len)
    return table[prefix]


@pytest.mark.parametrize("family, head, scan_layers", [
    ("bert", "sequence_classification", False), ("bert", "sequence_classification", True),
    ("electra", "pretraining", False), ("modernbert", "sequence_classification", False),
    ("modernbert", "sequence_classification", True),
    *(pytest.param(*case, marks=pytest.mark.slow) for case in (
        ("bert", "pretraining", False), ("roberta", "sequence_classification", False),
        ("electra", "sequence_classification", False)))])
def test_layerwise_learning_rates_per_group_by_hand(family, head, scan_layers):
    """decay 0.5: every parameter's multiplier is 0.5^(L + 2 - depth) with the depth of the
    hand table (embeddings 0.5^(L+2), layer l 0.5^(L+2-l), pooler / final norm / ModernBERT's
    prediction head 0.5, heads 1); scanned stacks get one multiplier per layer [n, 1, ...];
    the logged embeddings group is learning_rate x 0.5^(L+2)."""
    model = _tiny_model(family, head, scan_layers)
    layers = model.config.num_hidden_layers
    params = traverse_util.flatten_dict(abstract_params(model), sep="/")
    scales = optim.layerwise_lr_scales(abstract_params(model), family_named(family).depth, layers, 0.5)
    assert set(scales) == set(params)
    stacked = 0
    for path, leaf in params.items():
        depth = _hand_depth(HAND_DEPTHS[family, head], path)
        if isinstance(depth, tuple):
            stacked += 1
            want = (0.5 ** (layers + 2 - np.array(depth, np.float64))).reshape((-1,) + (1,) * (leaf.ndim - 1))
            np.testing.assert_array_equal(scales[path], want.astype(np.float32), err_msg=path)
        else:
            assert scales[path] == 0.5 ** (layers + 2 - depth), path
    assert (stacked > 0) == scan_layers
    config = config_lib.default_config()
    config.update(num_train_steps=10, layerwise_lr_decay=0.5)
    _, _, groups = optim.for_model(config, abstract_params(model), family_named(family).depth, layers)
    assert groups == {"embeddings": 0.5 ** (layers + 2)}
    config.layerwise_lr_decay = 1.0
    assert optim.for_model(config, abstract_params(model), family_named(family).depth, layers)[2] == {}


@pytest.mark.parametrize("name", ["adamw", "stable_adamw", "lamb"])
def test_layerwise_decay_is_the_optimizer_per_group_times_its_multiplier(name):
    """With decay, each group's step is the optimizer's step scaled by the group's
    multiplier, weight decay included: the plain optimizer run on each depth group of a tiny
    BERT apart (a few parameters of each, as a partly frozen model hands the optimizer),
    its updates times 0.5^(L + 2 - depth), gives the same parameters over 3 steps to float32
    rounding (XLA may fold a multiplier into the learning rate first: an ulp or two apart;
    no clipping: a global norm spans groups)."""
    model = _tiny_model("bert", "sequence_classification", False)
    layers = model.config.num_hidden_layers
    config = config_lib.default_config()
    config.update(num_train_steps=10, warmup_steps=2, learning_rate=1e-2, grad_clip_norm=0.0, optimizer=name,
                  layerwise_lr_decay=0.5, weight_decay=0.1)
    tx, _, _ = optim.for_model(config, abstract_params(model), family_named("bert").depth, layers)
    some = ("bert/embeddings/word_embeddings/embedding", "bert/embeddings/LayerNorm/scale",
            "bert/encoder/layer_0/attention/query/kernel", "bert/encoder/layer_1/mlp/output/bias",
            "bert/pooler/kernel", "classifier/kernel", "classifier/bias")
    rng = np.random.default_rng(6)
    params = optim.split(jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 0.1, p.dtype),
                                      abstract_params(model)), lambda path: path in some)[0]
    depth_of = functools.partial(_hand_depth, HAND_DEPTHS["bert", "sequence_classification"])
    groups = {d: (lambda path, d=d: depth_of(path) == d) for d in range(layers + 3)}
    plain = optim.make_optimizer(config)

    @jax.jit
    def reference(grads, states, params):
        updates, new_states = {}, {}
        for d, in_group in groups.items():
            group_updates, new_states[d] = plain.update(optim.split(grads, in_group)[0], states[d],
                                                        optim.split(params, in_group)[0])
            updates = optim.merge(updates, jax.tree.map(lambda u, d=d: u * 0.5 ** (layers + 2 - d), group_updates))
        return updates, new_states

    got, want = params, params
    state = tx.init(got)
    reference_states = {d: plain.init(optim.split(params, in_group)[0]) for d, in_group in groups.items()}
    for _ in range(3):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        updates, state = jax.jit(tx.update)(grads, state, got)
        got = optax.apply_updates(got, updates)
        updates, reference_states = reference(grads, reference_states, want)
        want = optax.apply_updates(want, updates)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-8), got, want)
    moved = jax.tree.map(lambda new, old: float(jnp.abs(new - old).max()), got, params)
    assert moved["bert"]["embeddings"]["word_embeddings"]["embedding"] < moved["classifier"]["kernel"] / 4


def test_trainable_by_regex_and_the_adapters_only_rule():
    trains = optim.trainable("embeddings/|layer_0/")
    assert not trains("bert/embeddings/word_embeddings/embedding")
    assert not trains("bert/encoder/layer_0/attention/query/kernel")
    assert trains("bert/encoder/layer_1/attention/query/kernel") and trains("classifier/kernel")
    assert trains("electra/embeddings_project/kernel")  # "embeddings/" is not "embeddings_project/"
    new = frozenset({"classifier/kernel", "classifier/bias"})
    lora = optim.trainable("", adapters_only=True, new_paths=new)
    assert lora("bert/encoder/layer_1/attention/query/lora_a") and lora("classifier/kernel")
    assert not lora("bert/encoder/layer_1/attention/query/kernel")
    lora = optim.trainable("layer_0/", adapters_only=True, new_paths=new)  # freeze applies on top
    assert not lora("bert/encoder/layer_0/attention/query/lora_a") and lora("bert/encoder/layer_1/mlp/lora_b")
    with pytest.raises(InputError, match=r"config.freeze '\(unclosed' is not a regular expression"):
        optim.trainable("(unclosed")


def test_split_and_merge_by_path_and_the_freeze_checks():
    model = _tiny_model("bert", "sequence_classification", True)
    params = abstract_params(model, boxed=True)
    trains = optim.trainable("embeddings/")
    trained, frozen = optim.split(params, trains)
    assert set(frozen["bert"]) == {"embeddings"} and "embeddings" not in trained["bert"]
    assert "classifier" in trained and "layers" in trained["bert"]["encoder"]
    assert jax.tree.structure(optim.merge(trained, frozen)) == jax.tree.structure(params)
    assert optim.split(params, None) == (params, {})
    optim.check_trainable(trains, params, "embeddings/")
    with pytest.raises(InputError, match=r"config.freeze 'layer_7/' matches no parameter \(paths look like bert/"):
        optim.check_trainable(optim.trainable("layer_7/"), params, "layer_7/")
    with pytest.raises(InputError, match=r"config.freeze '\.' leaves no parameter to train"):
        optim.check_trainable(optim.trainable("."), params, ".")


def test_freeze_and_layerwise_decay_config_rules():
    config = _schedule_config(layerwise_lr_decay=0.8, freeze="embeddings/")
    config_lib.validate(config)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(InputError, match=r"config.layerwise_lr_decay must be in \(0, 1\]"):
            config_lib.validate(_schedule_config(layerwise_lr_decay=bad))
