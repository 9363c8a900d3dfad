"""flaxft.attention_check: implementations compared with xla in output and gradients, the
noise floor, unavailable ones reported, the fastest agreeing one named; the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from flaxft import attention_check
from flaxft.models.attention import softmax_attention_heads_first

REPO = Path(__file__).resolve().parents[1]


def _heads_first(q, k, v, mask):
    swap = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731
    return swap(softmax_attention_heads_first(swap(q), swap(k), swap(v), mask.allowed_B1QL))


IMPLEMENTATIONS = {
    "xla": lambda q, k, v, mask: jax.nn.dot_product_attention(q, k, v, mask=mask.allowed_B1QL),
    "heads_first": _heads_first,  # flaxft's CPU attention: the same math, so it agrees
    "unmasked": lambda q, k, v, mask: jax.nn.dot_product_attention(q, k, v),  # wrong: ignores the mask
    "cudnn": lambda q, k, v, mask: jax.nn.dot_product_attention(q, k, v, mask=mask.allowed_B1QL,
                                                                implementation="cudnn"),
}


def test_compare_flags_mismatches_and_unavailable_implementations():
    data = attention_check.inputs(2, 32, 2, 8)
    assert data["mask"].allowed_B1QL.shape == (2, 1, 32, 32) and int(data["real"].sum()) == 32 + 28
    rows = attention_check.compare(IMPLEMENTATIONS, data, ["float32", "bfloat16"], repeats=1)
    by = {(r["dtype"], r["implementation"]): r for r in rows}
    assert [r["implementation"] for r in rows[:4]] == list(IMPLEMENTATIONS)
    for dtype in ("float32", "bfloat16"):
        assert by[dtype, "xla"]["ok"] and by[dtype, "xla"]["out_diff"] == 0.0
        assert by[dtype, "heads_first"]["ok"] and by[dtype, "unmasked"]["ok"] is False
        assert by[dtype, "unmasked"]["out_diff"] > 0.1
        assert "error" in by[dtype, "cudnn"] or by[dtype, "cudnn"]["ok"]  # no cuDNN on CPU
    assert by["float32", "xla"]["floor_out"] < 1e-5 < by["bfloat16", "xla"]["floor_out"]
    assert attention_check.fastest(rows) in ("xla", "heads_first")
    assert "MISMATCH" in attention_check.table(rows)


def test_cli_compares_every_implementation(tmp_path):
    args = ["--batch", "2", "--seq", "32", "--heads", "2", "--head_dim", "8", "--repeats", "1"]
    env = {**os.environ, "XLA_FLAGS": ""}
    result = subprocess.run([sys.executable, "-m", "flaxft.attention_check", *args], cwd=REPO, capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert {r["implementation"] for r in out["rows"]} >= {"xla", "dot_product", "flash"}
    assert all(r.get("ok") for r in out["rows"] if "error" not in r), out["rows"]
    bad = subprocess.run([sys.executable, "-m", "flaxft.attention_check", "--dtypes", "int8"], cwd=REPO,
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--dtypes" in bad.stderr
