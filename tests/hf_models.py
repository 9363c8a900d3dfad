"""Random Hugging Face BERT folders for tests: every weight perturbed, so a mix-up of any
two tensors (or a bias left at zero) shows in the outputs."""

import numpy as np
import torch
import transformers

# Small configurations with odd sizes; each exercises a different activation and head size.
CONFIGS = {
    "gelu_h36": dict(vocab_size=99, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
                     intermediate_size=37, hidden_act="gelu", max_position_embeddings=40, num_labels=3),
    "gelu_new_h20_regression": dict(vocab_size=71, hidden_size=20, num_hidden_layers=3, num_attention_heads=5,
                                    intermediate_size=13, hidden_act="gelu_new", type_vocab_size=3,
                                    max_position_embeddings=33, num_labels=1),
    "relu_h32_untied": dict(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=64, hidden_act="relu", max_position_embeddings=24, num_labels=5,
                            tie_word_embeddings=False, layer_norm_eps=1e-6),
}


def random_hf_model(architecture: str, config: dict, seed: int = 0) -> torch.nn.Module:
    """A transformers model of `architecture` with every parameter randomised."""
    if architecture == "BertForQuestionAnswering":  # transformers sizes qa_outputs by num_labels
        config = {**config, "num_labels": 2}
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(transformers.BertConfig(**config)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def save_random_hf_model(folder, architecture: str, config: dict, seed: int = 0) -> torch.nn.Module:
    model = random_hf_model(architecture, config, seed)
    model.save_pretrained(folder)
    return model


def padded_batch(config: dict, batch: int = 3, length: int = 13, seed: int = 1) -> dict[str, np.ndarray]:
    """input_ids, attention_mask (rows padded to different lengths), token_type_ids; [batch, length]."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config["vocab_size"], (batch, length))
    lengths = np.array([length, length - 4, 3][:batch])
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
    types = ((np.arange(length)[None] >= lengths[:, None] // 2) & (mask > 0)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def torch_outputs(model: torch.nn.Module, batch: dict) -> dict[str, np.ndarray]:
    """transformers outputs as numpy, keyed by flaxft's output names."""
    with torch.no_grad():
        out = model(**{k: torch.tensor(v) for k, v in batch.items()}, output_hidden_states=True)
    names = {
        "prediction_logits": "mlm_logits",
        "seq_relationship_logits": "nsp_logits",
        "logits": "mlm_logits" if type(model).__name__ == "BertForMaskedLM" else "logits",
        "start_logits": "start_logits",
        "end_logits": "end_logits",
        "last_hidden_state": "last_hidden_state",
        "pooler_output": "pooler_output",
    }
    result = {names[k]: v.numpy() for k, v in out.items() if k in names and v is not None}
    result.setdefault("last_hidden_state", out.hidden_states[-1].numpy())
    return result
