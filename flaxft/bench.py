"""Throughput, MFU, compile time and memory of the real pretraining step, and of the data loader.

    python -m flaxft.bench --config configs/pretrain_bert_base.py --steps 10 [--warmup 2] \
        [--config.global_batch_size=8 ...] [--what train|data|all]

`--what train` (default) runs `flaxft.train.train_step`, jitted as `flaxft.train.run` jits
it (mesh and logical-axis rules from `train.layout`, state laid out by
`train.state_layout` and created by `train.init_train_state`, explicit in/out shardings,
state donated), on a synthetic full-length batch of the config's shape:
global_batch_size rows of seq_len real tokens, max_predictions_per_seq masked positions
per row, NSP labels for `data.format == "bert"`. Every timed step is waited for
(`jax.block_until_ready` on the new state and metrics), so a step's time is its real
device time plus one dispatch.

`--what data` times the pretraining loader (`flaxft.data.PretrainLoader`, the config's
format, masking and shape, no prefetch thread) on the config's corpus; `--what all` does
both and reports how many times faster the loader makes tokens than the step eats them.

The last line printed is one JSON object (fields in `_JSON_FIELDS`); a human-readable
summary comes before it. Bad input exits 2 with one line.

MFU is model FLOPs per second (`model_flops_per_step`, the work the model needs, not
what XLA happens to execute) over the peak of the devices used: the published dense
bf16 peak for known TPU / GPU kinds, else (CPU) a peak measured here with a large
float32 matmul on all local devices at once (before and after the timed steps; the
best is kept). On CPU, `mfu_cpu_time` is the same ratio counted in process CPU seconds
(all threads) for both the step and the matmul: on a machine shared with other jobs it
moves far less than the wall-clock `mfu`.
"""

import functools
import json
import os
import resource
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from flaxft.errors import InputError, fail  # noqa: E402
from flaxft.host_memory import exec_with_huge_pages  # noqa: E402
from flaxft.models.config import BertConfig  # noqa: E402

# Dense bf16 peak FLOP/s per chip, as published. Matched as lowercase substrings of
# jax's device_kind, first match wins (so the more specific names come first).
PUBLISHED_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100", 989e12),  # SXM
    ("h200", 989e12),
    ("b200", 2250e12),
    ("a100", 312e12),
    ("tpu v2", 45e12),
    ("tpu v3", 123e12),
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),  # jax names v5p "TPU v5"
    ("tpu v6 lite", 918e12),  # v6e (Trillium)
    ("tpu v6e", 918e12),
)
PEAK_PUBLISHED = "published bf16 peak"
PEAK_MEASURED = "measured f32 matmul"

_JSON_FIELDS = (
    "step_time_s", "tokens_per_sec", "mfu", "model_flops_per_token", "model_flops_per_step",
    "compile_s", "peak_host_mem_gb", "device_mem_gb", "device_kind", "device_count",
    "peak_flops_per_device", "peak_flops_source",
)


# ----------------------------------------------------------------------------- FLOPs


def model_flops_per_step(
    model_config: BertConfig,
    batch: int,
    seq_len: int,
    max_predictions: int,
    with_nsp: bool,
    last_layer_rows: int | None = None,
) -> float:
    """Model FLOPs of one training step (forward + backward) of a BERT encoder with an MLM
    head scored at `max_predictions` positions per row, plus the pooler and NSP head when
    `with_nsp`.

    A matmul of an [n, k] activation with a [k, m] weight costs 2nkm FLOPs forward (a
    multiply and an add per term) and 4nkm backward (gradient of the activation and of the
    weight): 6 FLOPs per weight per row it is applied to. With D = hidden_size,
    F = intermediate_size, V = vocab_size, L = seq_len, M = max_predictions, per token:

    - encoder weights, per layer: query, key, value and attention output projections
      4 D^2, MLP D F + F D = 2 D F; so 6 (4 D^2 + 2 D F) per layer.
    - attention scores Q K^T and context P V: each 2 L D per token per layer forward
      (every query meets all L keys in every head: N heads x H = D; an encoder attends
      in both directions, so no causal halving), x3 for forward + backward: 12 L D.
    - embeddings: lookups (gathers, and scatter-adds backward), not matmuls: 0.

    The loss reads the last layer only at the M masked positions and the pooled first
    token, so the last layer's query, attention, output projection and MLP are counted
    at `last_layer_rows` = min(L, M + 1 with NSP, else M) rows per row of the batch (its
    keys and values at all L): the work the model needs. `last_layer_rows=L` counts a
    last layer that computes every row (scan_layers does).

    Per masked position (M per row; BERT scores the vocabulary only there):
    - MLM transform D x D and decoder D x V (the tied word embeddings): 6 (D^2 + D V).
      Per row when `with_nsp`: pooler D x D on the first token and NSP D x 2: 6 (D^2 + 2 D).

    Biases, LayerNorm, activations, softmax, dropout, losses and the optimizer update are
    O(parameters + activations), a rounding error next to these, and not counted (as in
    the PaLM / MaxText MFU convention). Remat recomputation is not model work: not counted.

    Returns FLOPs per step for `batch` rows of `seq_len` tokens.
    """
    d, f, v = model_config.hidden_size, model_config.intermediate_size, model_config.vocab_size
    if last_layer_rows is None:
        last_layer_rows = min(seq_len, max_predictions + (1 if with_nsp else 0))

    def layer(query_rows: int) -> int:
        keys_values = seq_len * 6 * 2 * d * d
        per_query = 6 * (2 * d * d + 2 * d * f) + 3 * 2 * 2 * seq_len * d
        return batch * (keys_values + query_rows * per_query)

    encoder = (model_config.num_hidden_layers - 1) * layer(seq_len) + layer(last_layer_rows)
    mlm = batch * max_predictions * 6 * (d * d + d * v)
    nsp = batch * 6 * (d * d + 2 * d) if with_nsp else 0
    return float(encoder + mlm + nsp)


# ----------------------------------------------------------------------------- peak


def published_peak_flops(device_kind: str) -> float | None:
    """Dense bf16 FLOP/s per chip for a known TPU / GPU `device_kind`, else None."""
    kind = device_kind.lower()
    for name, flops in PUBLISHED_PEAK_FLOPS:
        if name in kind:
            return flops
    return None


def measure_matmul_peak(size: int = 2048, repeats: int = 4, trials: int = 3) -> tuple[float, float]:
    """(FLOP/s per device, FLOPs per second of process CPU time) of `repeats` chained
    float32 [size, size] matmuls, run on every local device at once; the best of `trials`
    after a warm-up call. The second number does not depend on how many cores other
    processes take from this one, so it is the stabler denominator on a shared machine."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.local_devices()
    mesh = Mesh(np.asarray(devices), ("d",))
    split = NamedSharding(mesh, PartitionSpec("d"))
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((len(devices), size, size), np.float32), split)
    w = jax.device_put(
        (rng.standard_normal((len(devices), size, size)) / np.sqrt(size)).astype(np.float32), split
    )

    @functools.partial(jax.jit, in_shardings=(split, split), out_shardings=split)
    def chain(x, w):
        return jax.lax.fori_loop(0, repeats, lambda _, y: jnp.einsum("dij,djk->dik", y, w), x)

    jax.block_until_ready(chain(x, w))
    best_wall = best_cpu = float("inf")
    for _ in range(trials):
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(chain(x, w))
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    flops = 2 * size**3 * repeats
    return flops / best_wall, flops * len(devices) / best_cpu


def uses_published_peak() -> bool:
    """Whether the devices are a TPU / GPU kind in PUBLISHED_PEAK_FLOPS (else the peak is measured)."""
    import jax

    device = jax.devices()[0]
    return device.platform != "cpu" and published_peak_flops(device.device_kind) is not None


# ----------------------------------------------------------------------------- train step


def synthetic_batch(config, rows: int, seed: int = 0) -> dict:
    """A pretraining batch with the loader's fields and the config's shape, every token
    real: rows x seq_len ids, max_predictions_per_seq distinct masked positions per row
    (never [CLS]), all weights 1, and for the "bert" format two sentences (token types
    0 then 1) and random NSP labels. numpy arrays, as the loader gives them."""
    import numpy as np

    length, m = config.seq_len, config.data.max_predictions_per_seq
    vocab = config.model.vocab_size
    rng = np.random.default_rng(seed)
    token_type_ids = np.zeros((rows, length), np.int32)
    if config.data.format == "bert":
        token_type_ids[:, length // 2 :] = 1
    positions = np.sort(
        np.stack([rng.choice(np.arange(1, length), m, replace=False) for _ in range(rows)]), axis=1
    )
    return {
        "input_ids": rng.integers(min(5, vocab - 1), vocab, (rows, length)).astype(np.int32),
        "attention_mask": np.ones((rows, length), np.int32),
        "token_type_ids": token_type_ids,
        "segment_ids": np.ones((rows, length), np.int32),
        "masked_positions": positions.astype(np.int32),
        "masked_labels": rng.integers(0, vocab, (rows, m)).astype(np.int32),
        "masked_weights": np.ones((rows, m), np.float32),
        "next_sentence_label": (
            rng.integers(0, 2, rows) if config.data.format == "bert" else np.zeros(rows)
        ).astype(np.int32),
    }


def bench_train(config, steps: int, warmup: int, matmul_size: int = 2048) -> dict:
    """Times the real train step on a synthetic batch; returns the JSON fields."""
    import flax.linen as nn
    import jax
    import numpy as np

    from flaxft import config as config_lib
    from flaxft import optim, sharding, train
    from flaxft.models import ARCHITECTURES
    from flaxft.tasks import pretraining

    config_lib.validate(config)
    if config.data.max_predictions_per_seq >= config.seq_len:
        raise InputError("config.data.max_predictions_per_seq must be below config.seq_len ([CLS] is never masked)")
    if config.task.name != "pretraining":
        raise InputError(f"config.task.name is {config.task.name!r}: flaxft.bench measures pretraining configs")
    # What flaxft.train.run does before its loop, minus data and checkpoints.
    model_config = config_lib.model_config(config)
    task = pretraining
    model = ARCHITECTURES[task.architecture(config.data.format)](model_config)
    mesh, rules = train.layout(config, model)
    tx = optim.make_optimizer(config)
    rng = jax.random.key(config.seed)
    with mesh, nn.logical_axis_rules(rules):
        started = time.perf_counter()
        state_shardings, _ = train.state_layout(model, tx, mesh, rules, rng, config.seq_len)
        state = jax.block_until_ready(train.init_train_state(model, tx, rng, config.seq_len, state_shardings))
        init_s = time.perf_counter() - started

        batch_sharding = sharding.batch_sharding(mesh)
        local_rows = config.global_batch_size // jax.process_count()
        host_batch = synthetic_batch(config, local_rows, seed=config.seed + jax.process_index())
        batch = {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in host_batch.items()}
        step_fn = train.jit_train_step(config, model, tx, task, state_shardings, batch_sharding)
        started = time.perf_counter()
        compiled = step_fn.lower(state, batch).compile()
        compile_s = time.perf_counter() - started

    # On CPU the peak is measured before and after the steps and the best is kept: other
    # processes on a shared machine slow both down, and a low peak would inflate MFU.
    measured = [measure_matmul_peak(matmul_size)] if not uses_published_peak() else []
    step_times, step_cpu_times, step_faults = [], [], []
    for i in range(warmup + steps):
        wall, cpu, faults = time.perf_counter(), time.process_time(), page_faults()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            step_times.append(time.perf_counter() - wall)
            step_cpu_times.append(time.process_time() - cpu)
            step_faults.append(page_faults() - faults)
    loss = float(metrics["loss"])
    if measured:
        measured.append(measure_matmul_peak(matmul_size))

    with_nsp = config.data.format == "bert"
    flops_per_step = model_flops_per_step(
        model_config, config.global_batch_size, config.seq_len, config.data.max_predictions_per_seq, with_nsp
    )
    tokens_per_step = config.global_batch_size * config.seq_len
    step_time = statistics.median(step_times)
    step_cpu_time = statistics.median(step_cpu_times)
    devices = jax.devices()
    if measured:
        peak, source = max(m[0] for m in measured), PEAK_MEASURED
        flops_per_cpu_s = max(m[1] for m in measured)
    else:
        peak, source = published_peak_flops(devices[0].device_kind), PEAK_PUBLISHED
    return {
        "step_time_s": step_time,
        "tokens_per_sec": tokens_per_step / step_time,
        "mfu": flops_per_step / step_time / (peak * len(devices)),
        "model_flops_per_token": flops_per_step / tokens_per_step,
        "model_flops_per_step": flops_per_step,
        "compile_s": compile_s,
        "peak_host_mem_gb": peak_host_mem_gb(),
        "device_mem_gb": device_mem_gb(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "peak_flops_per_device": peak,
        "peak_flops_source": source,
        "measured_matmul_flops_per_device": [m[0] for m in measured] or None,
        # CPU only: the same ratio in FLOPs per second of process CPU time (all threads),
        # which other processes' load on a shared machine moves far less than wall time.
        "step_cpu_s": step_cpu_time if measured else None,
        "mfu_cpu_time": flops_per_step / step_cpu_time / flops_per_cpu_s if measured else None,
        "matmul_flops_per_cpu_s": flops_per_cpu_s if measured else None,
        "model_tflops_per_sec": flops_per_step / step_time / 1e12,
        "step_times_s": step_times,
        # Host pages first touched during a step (minor faults): freshly mapped memory the
        # kernel zeroes; flaxft.host_memory makes them 2 MB pages, ~200x fewer.
        "host_page_faults_per_step": statistics.median(step_faults),
        "init_s": init_s,
        "loss": loss,
        "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
        "architecture": type(model).__name__,
        "global_batch_size": config.global_batch_size,
        "seq_len": config.seq_len,
        "max_predictions_per_seq": config.data.max_predictions_per_seq,
        "mesh": dict(mesh.shape),
        "dtype": model_config.dtype,
        "jax": jax.__version__,
    }


def page_faults() -> int:
    """Minor page faults of this process so far (getrusage minflt)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_host_mem_gb() -> float:
    """Peak resident memory of this process so far (getrusage maxrss), in GB (1e9 bytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def device_mem_gb() -> float | None:
    """Largest peak_bytes_in_use over local devices in GB, or None where the backend keeps
    no statistics (CPU)."""
    import jax

    peaks = []
    for device in jax.local_devices():
        stats = device.memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"])
    return max(peaks) / 1e9 if peaks else None


# ----------------------------------------------------------------------------- data


def bench_data(config, batches: int) -> dict:
    """Times `batches` batches of the pretraining loader with the config's corpus, format,
    masking and shape (examples built first, uncached unless data.cache_dir is set; no
    prefetch thread, so this is one thread's rate). Tokens are row positions, padding
    included, as the train step counts them. Without data.tokenizer, a WordPiece tokenizer
    of model.vocab_size is trained on the corpus first (not timed)."""
    from flaxft import config as config_lib
    from flaxft import data

    config_lib.validate(config)
    documents = data.read_documents(config.data.path, config.data.text_column)
    if config.data.tokenizer:
        tokenizer = data.load_tokenizer(config.data.tokenizer)
    else:
        tokenizer = data.train_wordpiece(documents, config.model.vocab_size)
    started = time.perf_counter()
    examples = data.build_examples(
        documents, tokenizer, config.seq_len, config.data.format, config.seed, config.data.cache_dir or None,
        short_seq_prob=config.data.short_seq_prob,
    )
    build_s = time.perf_counter() - started
    loader = data.PretrainLoader(
        examples, config.global_batch_size, config.seed, vocab_size=tokenizer.get_vocab_size(),
        special_ids=data.special_token_ids(tokenizer), mask_rate=config.data.mask_rate,
        max_predictions=config.data.max_predictions_per_seq, whole_word=config.data.whole_word_masking,
        prefetch=0,
    )
    next(loader)  # the epoch order
    started = time.perf_counter()
    for _ in range(batches):
        next(loader)
    seconds = time.perf_counter() - started
    return {
        "data_tokens_per_sec": batches * config.global_batch_size * config.seq_len / seconds,
        "data_batch_ms": seconds / batches * 1e3,
        "data_batches": batches,
        "data_build_s": build_s,
        "data_rows": len(examples),
        "data_format": config.data.format,
        "data_whole_word": config.data.whole_word_masking,
        "global_batch_size": config.global_batch_size,
        "seq_len": config.seq_len,
        "peak_host_mem_gb": peak_host_mem_gb(),
    }


# ----------------------------------------------------------------------------- CLI


def summary(result: dict) -> str:
    """One human-readable line."""
    parts = []
    if "tokens_per_sec" in result:
        parts.append(
            f"{result['architecture']} b={result['global_batch_size']} L={result['seq_len']} "
            f"on {result['device_count']}x {result['device_kind']}: step {result['step_time_s'] * 1e3:.1f} ms, "
            f"{result['tokens_per_sec']:,.0f} tokens/s, {result['model_tflops_per_sec'] * 1e3:.1f} model GFLOP/s, "
            f"MFU {result['mfu']:.3f} of {result['peak_flops_per_device'] / 1e9:,.1f} GFLOP/s/device "
            f"({result['peak_flops_source']}); compile {result['compile_s']:.1f} s"
        )
        if result.get("mfu_cpu_time") is not None:
            parts.append(f"MFU by CPU time {result['mfu_cpu_time']:.3f}")
    if "data_tokens_per_sec" in result:
        parts.append(
            f"loader {result['data_tokens_per_sec']:,.0f} tokens/s ({result['data_batch_ms']:.2f} ms/batch)"
        )
    if "data_vs_train" in result:
        parts.append(f"loader/step {result['data_vs_train']:.1f}x")
    parts.append(f"peak host memory {result['peak_host_mem_gb']:.2f} GB")
    return "; ".join(parts)


def main(config, what: str, steps: int, warmup: int, data_batches: int, matmul_size: int) -> dict:
    """Runs the benchmark(s) `what` asks for and returns the merged result."""
    result: dict = {"what": what}
    if what in ("data", "all"):
        result.update(bench_data(config, data_batches))
    if what in ("train", "all"):
        result.update(bench_train(config, steps, warmup, matmul_size))
    if what == "all":
        result["data_vs_train"] = result["data_tokens_per_sec"] / result["tokens_per_sec"]
    result["peak_host_mem_gb"] = peak_host_mem_gb()
    return result


def run() -> None:
    from absl import flags, logging

    from flaxft import cli

    config_flag = cli.define_config_flag()
    what = flags.DEFINE_enum("what", "train", ["train", "data", "all"], "Benchmark the train step, the data loader, or both.")
    steps = flags.DEFINE_integer("steps", 10, "Timed train steps (the median is reported).")
    warmup = flags.DEFINE_integer("warmup", 2, "Untimed train steps after compilation.")
    data_batches = flags.DEFINE_integer("data_batches", 300, "Timed loader batches.")
    matmul_size = flags.DEFINE_integer("peak_matmul_size", 2048, "Side of the matmul that measures a CPU's peak.")
    cli.parse_flags()
    for name, flag, least in (("steps", steps, 1), ("warmup", warmup, 0), ("data_batches", data_batches, 1),
                              ("peak_matmul_size", matmul_size, 1)):
        if flag.value < least:
            fail(f"--{name} must be at least {least}, got {flag.value}")
    logging.set_verbosity(logging.WARNING)
    try:
        result = main(config_flag.value, what.value, steps.value, warmup.value, data_batches.value, matmul_size.value)
    except InputError as e:
        fail(str(e))
    print(summary(result))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    exec_with_huge_pages()  # as flaxft.main does
    run()
