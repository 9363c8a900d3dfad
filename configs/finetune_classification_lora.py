"""LoRA fine-tuning for sequence classification: configs/finetune_classification.py with
rank-8 adapters on the attention's query, key and value projections (peft.* defaults), the
base model frozen and the new head trained, at a 100x larger learning rate (5e-3, chosen
on the demo task among 1e-3, 3e-3 and 5e-3; README, Fine-tuning).

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
    config.learning_rate = 5e-3  # adapters start at zero and are few: 5e-5 barely moves them
    return config
