"""Random Hugging Face model folders for tests, of every family flaxft reads: every weight
perturbed, so a mix-up of any two tensors (or a bias left at zero) shows in the outputs."""

import inspect

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


# Per family: small configurations with odd sizes, each exercising something different.
FAMILY_CONFIGS = {
    "bert": CONFIGS,
    "roberta": {
        "gelu_h36_pad1": dict(vocab_size=99, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
                              intermediate_size=37, max_position_embeddings=40, type_vocab_size=1, pad_token_id=1,
                              layer_norm_eps=1e-5, num_labels=3),
        "relu_h20_pad3_untied_two_types": dict(
            vocab_size=71, hidden_size=20, num_hidden_layers=3, num_attention_heads=5, intermediate_size=13,
            hidden_act="relu", max_position_embeddings=33, type_vocab_size=2, pad_token_id=3,
            tie_word_embeddings=False, num_labels=1),
    },
    "electra": {
        "e20_h36": dict(vocab_size=99, embedding_size=20, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=37, max_position_embeddings=40, num_labels=3),
        "e32_h32_untied_relu": dict(vocab_size=71, embedding_size=32, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=4, intermediate_size=48, hidden_act="relu",
                                    max_position_embeddings=24, type_vocab_size=3, tie_word_embeddings=False,
                                    num_labels=1),
    },
    "modernbert": {  # global attention every 2nd / 3rd layer, windows of 2 and 3 tokens a side
        "global2_window4_cls": dict(
            vocab_size=99, hidden_size=36, num_hidden_layers=3, num_attention_heads=3, intermediate_size=37,
            layer_types=["full_attention", "sliding_attention", "full_attention"], local_attention=4,
            max_position_embeddings=64, num_labels=3, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            cls_token_id=1, sep_token_id=2),
        "global3_window6_biases_mean_untied": dict(
            vocab_size=71, hidden_size=20, num_hidden_layers=4, num_attention_heads=2, intermediate_size=13,
            local_attention=6, norm_bias=True, attention_bias=True, mlp_bias=True, classifier_bias=True,
            classifier_pooling="mean", num_labels=1, tie_word_embeddings=False, hidden_activation="gelu_new",
            classifier_activation="relu", decoder_bias=False, max_position_embeddings=32, pad_token_id=3,
            bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 77.0}}),
    },
    "xlm_roberta": {
        "gelu_new_h32": dict(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                             intermediate_size=48, hidden_act="gelu_new", max_position_embeddings=24,
                             type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5, num_labels=5),
    },
}


def random_hf_model(architecture: str, config: dict, seed: int = 0) -> torch.nn.Module:
    """A transformers model of `architecture` with every parameter randomised."""
    if architecture.endswith("ForQuestionAnswering"):  # transformers sizes qa_outputs by num_labels
        config = {**config, "num_labels": 2}
    torch.manual_seed(seed)
    model_class = getattr(transformers, architecture)
    model = model_class(model_class.config_class(**config, attn_implementation="eager")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def save_random_hf_model(folder, architecture: str, config: dict, seed: int = 0) -> torch.nn.Module:
    model = random_hf_model(architecture, config, seed)
    model.save_pretrained(folder)
    return model


def padded_batch(config: dict, batch: int = 3, length: int = 13, seed: int = 1) -> dict[str, np.ndarray]:
    """input_ids (pad_token_id after each row's length), attention_mask (rows padded to
    different lengths), token_type_ids (two types where the model has them); [batch, length]."""
    rng = np.random.default_rng(seed)
    pad = config.get("pad_token_id", 0)
    ids = rng.integers(0, config["vocab_size"], (batch, length))
    ids = np.where(ids == pad, (pad + 1) % config["vocab_size"], ids)  # the pad id only on padding
    lengths = np.array([length, length - 4, 3][:batch])
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask > 0, ids, pad)
    types = ((np.arange(length)[None] >= lengths[:, None] // 2) & (mask > 0)).astype(np.int64)
    types = np.minimum(types, config.get("type_vocab_size", 2) - 1)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def torch_outputs(model: torch.nn.Module, batch: dict) -> dict[str, np.ndarray]:
    """transformers outputs as numpy, keyed by flaxft's output names."""
    inputs = {k: torch.tensor(v) for k, v in batch.items()}
    if "token_type_ids" not in inspect.signature(model.forward).parameters:  # ModernBERT has no token types
        inputs.pop("token_type_ids", None)
    with torch.no_grad():
        out = model(**inputs)
        base = getattr(model, model.base_model_prefix, model)
        last_hidden_state = base(**inputs).last_hidden_state
    names = {
        "prediction_logits": "mlm_logits",
        "seq_relationship_logits": "nsp_logits",
        "logits": "mlm_logits" if type(model).__name__.endswith("ForMaskedLM") else "logits",
        "start_logits": "start_logits",
        "end_logits": "end_logits",
        "last_hidden_state": "last_hidden_state",
        "pooler_output": "pooler_output",
    }
    result = {names[k]: v.numpy() for k, v in out.items() if k in names and v is not None}
    result.setdefault("last_hidden_state", last_hidden_state.numpy())
    return result
