"""Do the attention implementations `model.attention` selects agree, and which is fastest?

    python -m flaxft.attention_check [--batch 8] [--seq 512] [--heads 12] [--head_dim 64] \
        [--dtypes float32,bfloat16] [--implementations dot_product,flash] [--repeats 5]

On random q, k, v [B, L, N, H] and the mask pretraining uses (two packed segments per
row, the last eighth of every other row padding: `attention_masks` with segment ids),
each implementation's output and its gradients with respect to q, k and v (of the sum of
the output times a random cotangent that is 0 at padding queries) are compared with
those of "xla" in the same dtype, at the real query positions. The noise floor is xla's
own distance from xla in float32 at the highest matmul precision; an implementation
agrees ("ok") when its distance from xla is within 4 x that floor + 1e-5. Each is also
timed (forward and backward, the median of --repeats after a warm-up call).

The implementations are reached through `flaxft.models.attention.attention(...,
implementation=NAME)`, the dispatch behind `model.attention`; an implementation that
fails on this backend (say cuDNN on CPU) is reported as unavailable with its error's
first line. Prints one markdown table, then one JSON line (last) with every row and
`fastest`: the fastest implementation that agrees in the last
dtype checked (bfloat16 by default). Exit 1 when an available implementation disagrees;
2 on bad flags.
"""

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

from flaxft import cli

cli.set_offline_defaults()

REFERENCE = "xla"


def inputs(batch: int, seq: int, heads: int, head_dim: int, seed: int = 0) -> dict:
    """float32 q, k, v [B, L, N, H], a cotangent of the output's shape (0 at padding
    queries), the `Mask` (boolean [B, 1, L, L] and segment ids) and the real-query mask [B, L]: two packed
    segments per row, the last seq // 8 positions of every other row padding."""
    import jax
    import jax.numpy as jnp

    from flaxft.models.attention import attention_masks

    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v, g = (jax.random.normal(key, (batch, seq, heads, head_dim), jnp.float32) for key in keys)
    position_L = jnp.arange(seq)
    real_BL = jnp.stack([position_L < (seq - seq // 8 if row % 2 else seq) for row in range(batch)])
    segment_BL = jnp.where(real_BL, 1 + (position_L >= seq // 3), 0)
    return {"q": q, "k": k, "v": v, "g": jnp.where(real_BL[:, :, None, None], g, 0.0),
            "mask": attention_masks(real_BL.astype(jnp.int32), segment_BL), "real": real_BL}


def selector() -> Callable[[str], Callable]:
    """name -> attention(q_BLNH, k_BLNH, v_BLNH, mask) -> [B, L, N, H] through
    `flaxft.models.attention.attention(..., implementation=name)`."""
    from flaxft.models import attention as attention_lib

    def select(name: str) -> Callable:
        def attend(q, k, v, mask):
            return attention_lib.attention(q, k, v, mask, 0.0, None, implementation=name)

        return attend

    return select


def forward_and_gradients(attend: Callable, data: dict, dtype) -> tuple:
    """(output [B, L, N, H], (dq, dk, dv)) of `attend` on the inputs cast to `dtype`,
    everything returned in float32."""
    import jax
    import jax.numpy as jnp

    def run(q, k, v, g, mask):
        out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, mask), q, k, v)
        grads = vjp(g.astype(out.dtype))
        return out.astype(jnp.float32), tuple(x.astype(jnp.float32) for x in grads)

    cast = [data[name].astype(dtype) for name in ("q", "k", "v", "g")]
    return jax.jit(run)(*cast, data["mask"])


def max_differences(result: tuple, reference: tuple, real_BL) -> tuple[float, float]:
    """(largest |output difference| at real queries, largest |gradient difference|)."""
    import jax.numpy as jnp

    out, grads = result
    ref_out, ref_grads = reference
    out_diff = jnp.where(real_BL[:, :, None, None], jnp.abs(out - ref_out), 0.0).max()
    grad_diff = max(jnp.abs(a - b).max() for a, b in zip(grads, ref_grads))
    return float(out_diff), float(grad_diff)


def time_ms(attend: Callable, data: dict, dtype, repeats: int) -> float:
    """Median milliseconds of one jitted forward and backward pass in `dtype`."""
    import jax

    step = jax.jit(lambda *args: forward_and_gradients(attend, dict(zip(("q", "k", "v", "g", "mask"), args)), dtype))
    args = [data[name] for name in ("q", "k", "v", "g", "mask")]
    jax.block_until_ready(step(*args))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(step(*args))
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def compare(implementations: dict[str, Callable], data: dict, dtypes: list[str], repeats: int) -> list[dict]:
    """One row per dtype and implementation (REFERENCE first): its distance from the
    reference in that dtype, the noise floor, ok, and its time; an implementation that
    raises is a row with `error` (its first line) instead."""
    import jax
    import jax.numpy as jnp

    with jax.default_matmul_precision("highest"):
        exact = forward_and_gradients(implementations[REFERENCE], data, jnp.float32)
    rows = []
    for dtype in dtypes:
        reference = forward_and_gradients(implementations[REFERENCE], data, jnp.dtype(dtype))
        floor = max_differences(reference, exact, data["real"])
        for name, attend in implementations.items():
            row = {"dtype": dtype, "implementation": name}
            try:
                result = reference if name == REFERENCE else forward_and_gradients(attend, data, jnp.dtype(dtype))
                row["ms"] = time_ms(attend, data, jnp.dtype(dtype), repeats)
            except Exception as e:  # noqa: BLE001 - an implementation this backend lacks is reported, not fatal
                rows.append({**row, "error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"})
                continue
            out_diff, grad_diff = max_differences(result, reference, data["real"])
            row.update(out_diff=out_diff, grad_diff=grad_diff, floor_out=floor[0], floor_grad=floor[1],
                       ok=out_diff <= 4 * floor[0] + 1e-5 and grad_diff <= 4 * floor[1] + 1e-5)
            rows.append(row)
    return rows


def fastest(rows: list[dict]) -> str | None:
    """The fastest implementation that agrees in the last dtype of `rows`."""
    if not rows:
        return None
    last = [r for r in rows if r["dtype"] == rows[-1]["dtype"] and r.get("ok")]
    return min(last, key=lambda r: r["ms"])["implementation"] if last else None


def table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = ["| dtype | attention | max abs diff out | max abs diff dq/dk/dv | xla vs float32 (out, grads) | "
             "fwd+bwd ms | status |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dtype']} | {r['implementation']} | | | | | unavailable: {r['error']} |")
            continue
        lines.append(f"| {r['dtype']} | {r['implementation']} | {r['out_diff']:.2e} | {r['grad_diff']:.2e} | "
                     f"{r['floor_out']:.2e}, {r['floor_grad']:.2e} | {r['ms']:.2f} | "
                     f"{'ok' if r['ok'] else 'MISMATCH'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("batch", 8), ("seq", 512), ("heads", 12), ("head_dim", 64), ("repeats", 5)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--implementations", default="dot_product,flash", help="compared with xla")
    args = parser.parse_args(argv)
    for name in ("batch", "seq", "heads", "head_dim", "repeats"):
        if getattr(args, name) < 1 or (name == "seq" and args.seq < 8):
            parser.exit(2, f"--{name} must be at least {8 if name == 'seq' else 1}, got {getattr(args, name)}\n")
    dtypes = [d for d in args.dtypes.split(",") if d]
    if not dtypes or any(d not in ("float32", "bfloat16", "float16") for d in dtypes):
        parser.exit(2, f"--dtypes {args.dtypes!r}: a comma-separated list of float32, bfloat16, float16\n")

    import jax

    select = selector()
    print(f"attention check on {jax.device_count()}x {jax.devices()[0].device_kind}: "
          f"batch {args.batch} x seq {args.seq} x {args.heads} heads x {args.head_dim}")
    names = [REFERENCE, *(n for n in args.implementations.split(",") if n and n != REFERENCE)]
    data = inputs(args.batch, args.seq, args.heads, args.head_dim)
    rows = compare({name: select(name) for name in names}, data, dtypes, args.repeats)
    print(table(rows))
    print(json.dumps({"fastest": fastest(rows), "rows": rows}), flush=True)
    return 1 if any(r.get("ok") is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
