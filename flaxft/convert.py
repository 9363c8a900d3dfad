"""Hugging Face <-> flaxft checkpoints from the command line.

    python -m flaxft.convert import-hf HF_DIR CKPT_DIR   # HF folder -> flaxft checkpoint
    python -m flaxft.convert export-hf CKPT_OR_WORKDIR HF_DIR             # LoRA adapters merged
    python -m flaxft.convert export-hf --adapter LORA_WORKDIR ADAPTER_DIR  # a PEFT adapter folder
    python -m flaxft.convert verify HF_DIR [--tolerance 1e-4]

`verify` runs transformers' PyTorch model (eager attention) and flaxft on the same padded
batch and prints the largest absolute difference of every output; it exits 1 when one
exceeds the tolerance.
Bad input (missing folder or config.json, an unsupported model_type, a missing or
misshapen weight, an existing output folder) exits 2 with a one-line message.
"""

import argparse
import sys
from pathlib import Path

from flaxft import cli

cli.set_offline_defaults()

import numpy as np  # noqa: E402

from flaxft import checkpoint, hf, hf_peft  # noqa: E402
from flaxft.errors import InputError, exit_on_input_error  # noqa: E402
from flaxft.models import family_of  # noqa: E402


def import_hf(hf_dir: str, ckpt_dir: str) -> None:
    model, params = hf.from_pretrained(hf_dir)
    out = checkpoint.save_model(ckpt_dir, model, params, source_dir=hf_dir)
    print(f"wrote {type(model).__name__} checkpoint to {out}")


def export_hf(ckpt: str, hf_dir: str, adapter: bool = False) -> None:
    """Writes the checkpoint's model as a Hugging Face folder, a LoRA run's with its
    adapters merged into the kernels; with `adapter`, a LoRA run's PEFT adapter folder
    over its init_from instead (`flaxft.hf_peft`)."""
    model, params = checkpoint.load_model(ckpt)
    if adapter:
        init_from = checkpoint.run_config_of(ckpt).get("init_from", "")
        to_save = hf_peft.save_adapter(model, params, init_from, hf_dir, checkpoint.tokenizer_dir_of(ckpt))
        print(f"wrote the PEFT adapter of {type(model).__name__} (rank {model.config.lora_rank}; modules_to_save: "
              f"{', '.join(to_save) or 'none'}) over {init_from} to {hf_dir}")
        return
    hf.save_pretrained(model, params, hf_dir, tokenizer_dir=checkpoint.tokenizer_dir_of(ckpt),
                       sentence_transformers_dir=checkpoint.sentence_transformers_dir_of(ckpt))
    parts = model.hf_models(params) if hasattr(model, "hf_models") else {"": (model, params)}
    print("wrote " + ", ".join(f"{type(part).__name__} to {Path(hf_dir) / folder}" for folder, (part, _) in parts.items()))


def sample_batch(config: dict, batch: int = 4, length: int = 32, seed: int = 0) -> dict:
    """Random ids with ragged padding for a model of Hugging Face `config`: input_ids,
    attention_mask, and two token types where the model has them; each [batch, length] int64."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config["vocab_size"], (batch, length))
    lengths = np.linspace(length, max(2, length // 4), batch).astype(int)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
    out = {"input_ids": ids, "attention_mask": mask}
    if config.get("type_vocab_size"):
        types = ((np.arange(length)[None] >= lengths[:, None] // 2) & (mask > 0)).astype(np.int64)
        out["token_type_ids"] = np.minimum(types, config["type_vocab_size"] - 1)
    return out


def compare_with_transformers(hf_dir: str, batch: dict) -> dict[str, float]:
    """Largest |flaxft - transformers| per output on `batch`, both in float32."""
    try:
        import torch
        import transformers
    except ImportError:
        raise InputError("verify needs torch and transformers (pip install torch transformers)") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model, params = hf.from_pretrained(hf_dir)
    architecture = type(model).__name__
    # The reference (eager) attention: transformers' sdpa path gives padding positions other
    # outputs (ModernBERT's), which are no difference between the models.
    torch_model = getattr(transformers, architecture).from_pretrained(hf_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = torch_model(**{k: torch.tensor(v) for k, v in batch.items()})
    ours = model.apply({"params": params}, **batch)
    return {
        name: float(np.abs(np.asarray(getattr(ours, name)) - ref[hf_name].float().numpy()).max())
        for name, hf_name in family_of(architecture).hf.output_names(architecture).items()
    }


def verify(hf_dir: str, tolerance: float) -> int:
    """Compares the model in `hf_dir`, and in each subfolder holding a model of its own (an
    ELECTRA export's generator/), with transformers; 1 if any differs above `tolerance`."""
    hf.read_hf_config(hf_dir)  # an InputError naming what is missing, before looking inside
    subfolders = sorted(p for p in Path(hf_dir).iterdir() if (p / "config.json").is_file()
                        and any((p / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")))
    failed = False
    for folder in [Path(hf_dir), *subfolders]:
        if subfolders:
            print(f"{folder}:")
        config = hf.read_hf_config(folder)
        _, model_config = hf.config_from_hf(config, f"{folder}/config.json")
        diffs = compare_with_transformers(str(folder), sample_batch(config, length=min(32, model_config.max_seq_len)))
        for name, diff in diffs.items():
            print(f"{name:20s} max abs diff {diff:.3e}")
        worst = max(diffs.values())
        failed |= worst > tolerance
        print(f"{'FAIL' if worst > tolerance else 'OK'}: largest difference {worst:.3e} (tolerance {tolerance:g})")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flaxft.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("import-hf", help="Hugging Face folder -> flaxft checkpoint")
    p.add_argument("hf_dir", help="a Hugging Face model folder (config.json and weights)")
    p.add_argument("ckpt_dir", help="the flaxft checkpoint folder to write (must not exist or be empty)")
    p = sub.add_parser("export-hf", help="flaxft checkpoint or workdir -> Hugging Face folder")
    p.add_argument("ckpt", help="a flaxft workdir (its newest checkpoint) or checkpoint folder")
    p.add_argument("hf_dir", help="the Hugging Face folder to write (must not exist or be empty); an ELECTRA "
                                  "pretraining run writes the discriminator there and the generator in generator/")
    p.add_argument("--adapter", action="store_true",
                   help="a LoRA run: write a PEFT adapter folder (adapter_config.json, adapter_model.safetensors) "
                        "for its init_from instead of the model with the adapters merged")
    p = sub.add_parser("verify", help="compare flaxft with transformers (PyTorch) on one batch")
    p.add_argument("hf_dir", help="a Hugging Face model folder")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest absolute difference allowed")
    args = parser.parse_args(argv)
    if args.command == "import-hf":
        return exit_on_input_error(lambda: import_hf(args.hf_dir, args.ckpt_dir)) or 0
    if args.command == "export-hf":
        return exit_on_input_error(lambda: export_hf(args.ckpt, args.hf_dir, args.adapter)) or 0
    return exit_on_input_error(lambda: verify(args.hf_dir, args.tolerance))


if __name__ == "__main__":
    sys.exit(main())
