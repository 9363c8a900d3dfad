"""Runs a PyTorch peer script under `torch.autocast("cpu", dtype=torch.bfloat16)`: the
peer's own recipe with bfloat16 matrix products (PyTorch's mixed precision on CPU), for a
like-for-like comparison with flaxft's `model.dtype=bfloat16`.

    python benchmarks/torch_autocast.py ../shared/peers/torch_modernbert_step.py base 8 128 3 [0.25]
    python benchmarks/torch_autocast.py ../shared/peers/torch_finetune_classification.py TRAIN VAL text label --seq-len 64
"""

import runpy
import sys

import torch


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    script, sys.argv = sys.argv[1], sys.argv[1:]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
