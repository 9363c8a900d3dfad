"""LoRA fine-tuning for sequence classification: configs/finetune_classification.py with
rank-8 adapters on the attention's query, key and value projections (peft.* defaults), the
base model frozen and the new head trained, at LoRA's usual 20x larger learning rate.

    python -m flaxft.main --config configs/finetune_classification_lora.py --workdir runs/lora \
        --config.init_from=PATH_TO_HF_FOLDER_OR_FLAXFT_WORKDIR
    python -m flaxft.convert export-hf runs/lora OUT            # adapters merged: a plain model
    python -m flaxft.convert export-hf --adapter runs/lora OUT  # a PEFT adapter folder
"""

import pathlib
import runpy

FULL = pathlib.Path(__file__).with_name("finetune_classification.py")


def get_config():
    config = runpy.run_path(str(FULL))["get_config"]()
    config.peft.method = "lora"
    config.learning_rate = 1e-3  # adapters start at zero and are few: 5e-5 barely moves them
    return config
