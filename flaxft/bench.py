"""Throughput, MFU, compile time and memory of the real pretraining step, and of the data loader.

    python -m flaxft.bench --config configs/pretrain_bert_base.py --steps 10 [--warmup 2] \
        [--config.global_batch_size=8 ...] [--what train|data|all] [--pad_fraction 0.25]

The run is built by the same setup the CLI uses (`flaxft.pretrain.setup`, in a temporary
workdir). `--what train` (default) runs `flaxft.loop.train_step`, jitted as the loop jits
it (the run's mesh and logical-axis rules, state laid out by `loop.abstract_state` and
created by `loop.init_train_state`, explicit in/out shardings, state donated), on a
synthetic full-length batch of the config's shape: global_batch_size rows of seq_len
real tokens, max_predictions_per_seq masked positions per row, NSP labels for
`data.format == "bert"`. Every timed step is waited for (`jax.block_until_ready` on the
new state and metrics), so a step's time is its real device time plus one dispatch.

`--pad_fraction F` makes the tail int(seq_len * F) positions of every row padding (the
rule of the PyTorch peers' `pad_fraction`): pad ids, attention_mask 0, segment id 0, no
masked positions there (round(max_predictions_per_seq * real / seq_len) of the slots are
used, the rest have weight 0, as the loader leaves unused slots). The same compiled step
is timed; tokens/s and MFU still count every position of the batch, padding included.

`--what data` times the run's pretraining loader (the config's corpus, format, masking
and shape; batches made on this thread); `--what all` does both and reports how many
times faster the loader makes tokens than the step eats them.

The last line printed is one JSON object (fields in `_JSON_FIELDS`); a human-readable
summary comes before it. Bad input exits 2 with one line.

MFU is model FLOPs per second (the family's `train_flops`: the work the model needs, not
what XLA happens to execute) over the peak of the devices used: the published dense
bf16 peak for known TPU / GPU kinds, else (CPU) a peak measured here with a large
matmul in the model's compute dtype (float32 accumulation) on all local devices at once
(before and after the timed steps; the best is kept). On CPU, `mfu_cpu_time` is the same ratio counted in process CPU seconds
(all threads) for both the step and the matmul: on a machine shared with other jobs it
moves far less than the wall-clock `mfu`.
"""

import functools
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

from flaxft import cli

cli.set_offline_defaults()

from flaxft.errors import InputError, fail  # noqa: E402
from flaxft.host_memory import exec_with_huge_pages  # noqa: E402

# Dense bf16 peak FLOP/s per chip, as published. Matched as lowercase substrings of
# jax's device_kind, first match wins (so the more specific names come first).
PUBLISHED_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("h100", 989e12),  # SXM
    ("h200", 989e12),
    ("gb200", 2500e12),  # a B200 in a Grace-Blackwell superchip, clocked higher
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

_JSON_FIELDS = (
    "step_time_s", "tokens_per_sec", "mfu", "model_flops_per_token", "model_flops_per_step",
    "compile_s", "peak_host_mem_gb", "device_mem_gb", "device_kind", "device_count",
    "peak_flops_per_device", "peak_flops_source", "device_mem_limit_gb",
)


# ----------------------------------------------------------------------------- peak


def published_peak_flops(device_kind: str) -> float | None:
    """Dense bf16 FLOP/s per chip for a known TPU / GPU `device_kind`, else None."""
    kind = device_kind.lower()
    for name, flops in PUBLISHED_PEAK_FLOPS:
        if name in kind:
            return flops
    return None


def measure_matmul_peak(size: int = 2048, repeats: int = 4, trials: int = 3,
                        dtype: str = "float32") -> tuple[float, float]:
    """(FLOP/s per device, FLOPs per second of process CPU time) of `repeats` chained
    [size, size] matmuls in `dtype` (float32 accumulation, as the models' products), run
    on every local device at once; the best of `trials` after a warm-up call. The second number does not depend on how many cores other
    processes take from this one, so it is the stabler denominator on a shared machine."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.local_devices()
    mesh = Mesh(np.asarray(devices), ("d",))
    split = NamedSharding(mesh, PartitionSpec("d"))
    rng = np.random.default_rng(0)
    x = jax.device_put(jnp.asarray(rng.standard_normal((len(devices), size, size)), dtype), split)
    w = jax.device_put(jnp.asarray(rng.standard_normal((len(devices), size, size)) / np.sqrt(size), dtype), split)

    @functools.partial(jax.jit, in_shardings=(split, split), out_shardings=split)
    def chain(x, w):
        def product(_, y):
            return jnp.einsum("dij,djk->dik", y, w, preferred_element_type=jnp.float32).astype(dtype)

        return jax.lax.fori_loop(0, repeats, product, x)

    jax.block_until_ready(chain(x, w))
    best_wall = best_cpu = float("inf")
    for _ in range(trials):
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(chain(x, w))
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    flops = 2 * size**3 * repeats
    return flops / best_wall, flops * len(devices) / best_cpu


def measured_peak_source(dtype: str) -> str:
    """The JSON's peak_flops_source for a peak measured with `dtype` products."""
    return f"measured {dtype} matmul"


def uses_published_peak() -> bool:
    """Whether the devices are a TPU / GPU kind in PUBLISHED_PEAK_FLOPS (else the peak is measured)."""
    import jax

    device = jax.devices()[0]
    return device.platform != "cpu" and published_peak_flops(device.device_kind) is not None


# ----------------------------------------------------------------------------- train step


def real_length(seq_len: int, pad_fraction: float) -> int:
    """Real tokens per row when the tail int(seq_len * pad_fraction) positions are padding."""
    return seq_len - int(seq_len * pad_fraction)


def synthetic_batch(config, rows: int, seed: int = 0, pad_fraction: float = 0.0) -> dict:
    """A pretraining batch with the loader's fields and the config's shape: rows x seq_len
    ids, of which the first `real_length(seq_len, pad_fraction)` per row are real tokens
    and the rest padding (pad id, attention_mask 0, segment id 0, token type 0);
    max_predictions_per_seq slots per row, of which round(M * real / seq_len) hold
    distinct masked positions among the real tokens (never [CLS]) with weight 1 and the
    rest position 0, label 0, weight 0 (as the loader leaves unused slots); for the
    "bert" format two sentences (token types 0 then 1) and random NSP labels. numpy
    arrays, as the loader gives them. pad_fraction 0: every token real, every slot used."""
    import numpy as np

    length, m = config.seq_len, config.data.max_predictions_per_seq
    vocab = config.model.vocab_size
    real = real_length(length, pad_fraction)
    used = min(m, real - 1, round(m * real / length))
    rng = np.random.default_rng(seed)
    token_type_ids = np.zeros((rows, length), np.int32)
    if config.data.format == "bert":
        token_type_ids[:, real // 2 : real] = 1
    positions = np.zeros((rows, m), np.int32)
    positions[:, :used] = np.sort(
        np.stack([rng.choice(np.arange(1, real), used, replace=False) for _ in range(rows)]), axis=1
    )
    weights = np.zeros((rows, m), np.float32)
    weights[:, :used] = 1.0
    labels = np.where(weights > 0, rng.integers(0, vocab, (rows, m)), 0).astype(np.int32)
    input_ids = rng.integers(min(5, vocab - 1), vocab, (rows, length)).astype(np.int32)
    input_ids[:, real:] = config.model.get("pad_token_id", 0)
    attention_mask = np.ones((rows, length), np.int32)
    attention_mask[:, real:] = 0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "segment_ids": attention_mask.copy(),
        "masked_positions": positions,
        "masked_labels": labels,
        "masked_weights": weights,
        "next_sentence_label": (
            rng.integers(0, 2, rows) if config.data.format == "bert" else np.zeros(rows)
        ).astype(np.int32),
    }


def prepared_run(config, workdir: Path, pad_fraction: float = 0.0):
    """The pretraining run `config` describes, built by the CLI's own setup in `workdir`
    (after checking that a batch with `pad_fraction` padding can be made of its shape)."""
    from flaxft import config as config_lib
    from flaxft import pretrain

    config_lib.validate(config)
    if config.task.name != "pretraining":
        raise InputError(f"config.task.name is {config.task.name!r}: flaxft.bench measures pretraining configs")
    if config.data.max_predictions_per_seq >= config.seq_len:
        raise InputError("config.data.max_predictions_per_seq must be below config.seq_len ([CLS] is never masked)")
    if not 0.0 <= pad_fraction < 1.0 or real_length(config.seq_len, pad_fraction) < 2:
        raise InputError(f"--pad_fraction {pad_fraction} must be in [0, 1) and leave at least 2 real tokens in "
                         f"each row of config.seq_len {config.seq_len}")
    return pretrain.setup(config, workdir)


def bench_train(run, steps: int, warmup: int, matmul_size: int = 2048, pad_fraction: float = 0.0) -> dict:
    """Times the run's train step on a synthetic batch (`synthetic_batch`, the tail
    `pad_fraction` of every row padding); returns the JSON fields."""
    import jax
    import numpy as np

    from flaxft import loop, sharding
    from flaxft.models import family_of

    config, model, mesh = run.config, run.model, run.mesh
    rng = jax.random.key(config.seed)
    with sharding.activated(mesh, run.rules):
        started = time.perf_counter()
        state_shardings, _ = loop.abstract_state(model, run.tx, mesh, run.rules, rng, config.seq_len, run.trainable)
        state = jax.block_until_ready(loop.init_train_state(model, run.tx, rng, config.seq_len, state_shardings,
                                                            trainable=run.trainable))
        init_s = time.perf_counter() - started

        batch_sharding = sharding.batch_sharding(mesh)
        local_rows = config.global_batch_size // jax.process_count()
        host_batch = synthetic_batch(config, local_rows, seed=config.seed + jax.process_index(),
                                     pad_fraction=pad_fraction)
        batch = {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in host_batch.items()}
        step_fn = loop.jit_train_step(config, model, run.tx, run.task, state_shardings, batch_sharding, run.trainable,
                                      run.learning_rate_groups)
        started = time.perf_counter()
        compiled = step_fn.lower(state, batch).compile()
        compile_s = time.perf_counter() - started

    # On CPU the peak is measured before and after the steps and the best is kept: other
    # processes on a shared machine slow both down, and a low peak would inflate MFU.
    dtype = str(model.config.compute_dtype)
    measured = [measure_matmul_peak(matmul_size, dtype=dtype)] if not uses_published_peak() else []
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
        measured.append(measure_matmul_peak(matmul_size, dtype=dtype))

    flops_per_step = family_of(model).train_flops(
        model.config, config.global_batch_size, config.seq_len, config.data.max_predictions_per_seq,
        run.task.next_sentence,
    )
    tokens_per_step = config.global_batch_size * config.seq_len
    step_time = statistics.median(step_times)
    step_cpu_time = statistics.median(step_cpu_times)
    devices = jax.local_devices()
    flops_per_cpu_s = max(m[1] for m in measured) if measured else None
    device = device_fields(devices[0].device_kind, jax.device_count(), [d.memory_stats() for d in devices],
                           (max(m[0] for m in measured), measured_peak_source(dtype)) if measured else None)
    peak = device["peak_flops_per_device"]
    return {
        "step_time_s": step_time,
        "tokens_per_sec": tokens_per_step / step_time,
        "mfu": flops_per_step / step_time / (peak * device["device_count"]),
        "model_flops_per_token": flops_per_step / tokens_per_step,
        "model_flops_per_step": flops_per_step,
        "compile_s": compile_s,
        "peak_host_mem_gb": peak_host_mem_gb(),
        **device,
        "measured_matmul_flops_per_device": [m[0] for m in measured] or None,
        # CPU only: the same ratio in FLOPs per second of process CPU time (all threads),
        # which other processes' load on a shared machine moves far less than wall time.
        "step_cpu_s": step_cpu_time if measured else None,
        "mfu_cpu_time": flops_per_step / step_cpu_time / flops_per_cpu_s if measured else None,
        "matmul_flops_per_cpu_s": flops_per_cpu_s if measured else None,
        "model_tflops_per_sec": flops_per_step / step_time / 1e12,
        "step_times_s": step_times,
        # Host pages first touched during a step (minor faults): freshly mapped memory the
        # kernel zeroes (flaxft.host_memory backs it with 2 MB pages).
        "host_page_faults_per_step": statistics.median(step_faults),
        "init_s": init_s,
        "loss": loss,
        "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
        "architecture": type(model).__name__,
        "global_batch_size": config.global_batch_size,
        "seq_len": config.seq_len,
        "max_predictions_per_seq": config.data.max_predictions_per_seq,
        "pad_fraction": pad_fraction,
        "real_tokens_per_row": real_length(config.seq_len, pad_fraction),
        "mesh": dict(mesh.shape),
        "dtype": dtype,
        "jax": jax.__version__,
    }


def step_memory(config, devices) -> dict:
    """Bytes per device of the train step `config` describes, compiled (never run) for
    a mesh over `devices`: `compiled.memory_analysis()`'s argument (state and batch),
    output, alias (the donated state its outputs reuse) and temporary sizes, and their
    total argument + output - alias + temp, the most the step holds at once. The model,
    task, optimizer and shardings are the pretraining setup's, without its corpus and
    tokenizer: the state and the config-shaped batch are abstract."""
    import jax
    import numpy as np

    from flaxft import config as config_lib
    from flaxft import loop, optim, pretrain, sharding
    from flaxft.models import abstract_params, family_named

    config_lib.validate(config)
    family = family_named(config.model.family)
    task = pretrain.pretraining_task(config, family)
    model = family.architecture(task.head)(config_lib.model_config(config))
    mesh, rules = sharding.make_mesh(config.mesh, devices), sharding.logical_rules(config.mesh)
    tx, trainable, groups = optim.for_model(config, abstract_params(model), family.depth,
                                            model.config.num_hidden_layers)
    with sharding.activated(mesh, rules):
        state_shardings, abstract = loop.abstract_state(model, tx, mesh, rules, jax.random.key(0), config.seq_len,
                                                        trainable)
        batch_sharding = sharding.batch_sharding(mesh)
        batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
                 for k, v in synthetic_batch(config, config.global_batch_size).items()}
        step_fn = loop.jit_train_step(config, model, tx, task, state_shardings, batch_sharding, trainable, groups)
        analysis = step_fn.lower(loop.with_shardings(abstract, state_shardings), batch).compile().memory_analysis()
    sizes = {name: int(getattr(analysis, f"{name}_size_in_bytes")) for name in ("argument", "output", "alias", "temp")}
    sizes["total"] = sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"]
    sizes["params"] = int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract.params)))
    return sizes


def page_faults() -> int:
    """Minor page faults of this process so far (getrusage minflt)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_host_mem_gb() -> float:
    """Peak resident memory of this process so far (getrusage maxrss), in GB (1e9 bytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def device_fields(device_kind: str, device_count: int, memory_stats: list[dict | None],
                  measured_peak: tuple[float, str] | None = None) -> dict:
    """The JSON's device fields: device_kind, device_count, peak_flops_per_device and
    peak_flops_source (`measured_peak` as (FLOP/s, source) when given, else the published
    peak of `device_kind`), device_mem_gb (the largest peak_bytes_in_use of the local
    devices' `memory_stats()`) and device_mem_limit_gb (the smallest bytes_limit), in GB
    (1e9 bytes), None where the backend keeps no statistics (CPU)."""
    if measured_peak is not None:
        peak, source = measured_peak
    else:
        peak, source = published_peak_flops(device_kind), PEAK_PUBLISHED
        if peak is None:
            raise ValueError(f"no published peak for device kind {device_kind!r}: measure one")

    def gb(key, pick):
        values = [stats[key] for stats in memory_stats if stats and key in stats]
        return pick(values) / 1e9 if values else None

    return {
        "device_kind": device_kind,
        "device_count": device_count,
        "peak_flops_per_device": peak,
        "peak_flops_source": source,
        "device_mem_gb": gb("peak_bytes_in_use", max),
        "device_mem_limit_gb": gb("bytes_limit", min),
    }


# ----------------------------------------------------------------------------- data


def bench_data(run, batches: int) -> dict:
    """Times the run's training loader: its first batch (the wait for the first chunks
    to be prepared), then `batches` more (made on this thread, no prefetching). Tokens
    are row positions, padding included, as the train step counts them."""
    config, loader = run.config, run.train_loader
    started = time.perf_counter()
    loader.get_batch(0)  # waits for the first block of chunks to be prepared
    first_batch_s = time.perf_counter() - started
    started = time.perf_counter()
    for step in range(1, batches + 1):
        loader.get_batch(step)
    seconds = time.perf_counter() - started
    return {
        "data_tokens_per_sec": batches * config.global_batch_size * config.seq_len / seconds,
        "data_batch_ms": seconds / batches * 1e3,
        "data_batches": batches,
        "data_first_batch_s": first_batch_s,  # after the setup (setup_s)
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
        real = f" ({result['real_tokens_per_row']} real)" if result["pad_fraction"] else ""
        parts.append(
            f"{result['architecture']} b={result['global_batch_size']} L={result['seq_len']}{real} "
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


def measure(config, what: str, steps: int, warmup: int, data_batches: int, matmul_size: int,
            pad_fraction: float = 0.0) -> dict:
    """Builds the run (in a temporary workdir) and runs the benchmark(s) `what` asks for;
    returns the merged result."""
    result: dict = {"what": what}
    with tempfile.TemporaryDirectory(prefix="flaxft-bench-") as workdir:
        started = time.perf_counter()
        run = prepared_run(config, Path(workdir), pad_fraction)
        result["setup_s"] = time.perf_counter() - started
        try:
            if what in ("data", "all"):
                result.update(bench_data(run, data_batches))
            if what in ("train", "all"):
                result.update(bench_train(run, steps, warmup, matmul_size, pad_fraction))
        finally:
            run.train_loader.close()
    if what == "all":
        result["data_vs_train"] = result["data_tokens_per_sec"] / result["tokens_per_sec"]
    result["peak_host_mem_gb"] = peak_host_mem_gb()
    return result


def main() -> None:
    from absl import flags, logging

    from flaxft import cli

    cli.define_config_flag()
    what = flags.DEFINE_enum("what", "train", ["train", "data", "all"], "Benchmark the train step, the data loader, or both.")
    steps = flags.DEFINE_integer("steps", 10, "Timed train steps (the median is reported).")
    warmup = flags.DEFINE_integer("warmup", 2, "Untimed train steps after compilation.")
    data_batches = flags.DEFINE_integer("data_batches", 300, "Timed loader batches.")
    matmul_size = flags.DEFINE_integer("peak_matmul_size", 2048, "Side of the matmul that measures a CPU's peak.")
    pad_fraction = flags.DEFINE_float(
        "pad_fraction", 0.0, "Share of every row of the timed batch that is padding (its tail: attention_mask 0, "
        "segment id 0, no masked positions); tokens/s still counts every position.")
    config = cli.parse_flags(__doc__)
    for name, flag, least in (("steps", steps, 1), ("warmup", warmup, 0), ("data_batches", data_batches, 1),
                              ("peak_matmul_size", matmul_size, 1)):
        if flag.value < least:
            fail(f"--{name} must be at least {least}, got {flag.value}")
    logging.set_verbosity(logging.WARNING)
    try:
        result = measure(config, what.value, steps.value, warmup.value, data_batches.value,
                         matmul_size.value, pad_fraction.value)
    except InputError as e:
        fail(str(e))
    print(summary(result))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    exec_with_huge_pages()  # as flaxft.main does
    main()
