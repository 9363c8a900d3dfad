"""Model FLOPs of a ModernBERT masked-LM pretraining step, the numerator of MFU."""

from flaxft.models.modernbert.configuration import ModernBertConfig


def keys_per_query(seq_len: int, window: int | None) -> float:
    """Mean number of keys a query of a seq_len row attends to: all of them, or those at
    most `window` positions away (a sliding-window layer)."""
    if window is None or window >= seq_len - 1:
        return float(seq_len)
    total = sum(min(q + window, seq_len - 1) - max(q - window, 0) + 1 for q in range(seq_len))
    return total / seq_len


def train_flops(
    model_config: ModernBertConfig,
    batch: int,
    seq_len: int,
    max_predictions: int,
    with_nsp: bool,
    last_layer_rows: int | None = None,
) -> float:
    """Model FLOPs of one masked-LM training step (forward + backward), counted as
    `flaxft.models.bert.flops.train_flops` counts BERT's (6 per weight per row it is
    applied to; attention scores and context 2 x 2 H per query-key pair per head,
    forward, x3 with backward), with ModernBERT's shapes:

    - per layer and token: fused Wqkv D x 3D, Wo D x D, GeGLU Wi D x 2F and Wo F x D:
      6 (4 D^2 + 3 D F);
    - attention at its real cost: a sliding-window layer's query meets only the keys
      within local_attention // 2 positions (`keys_per_query`), a global layer's all L;
    - the last layer only at the `max_predictions` masked rows (queries, Wo, MLP; Wqkv
      still at every row, since keys and values need it), `last_layer_rows` to override;
    - MLM prediction head D x D and decoder D x V at the masked positions.
    ModernBERT has no next-sentence head: `with_nsp` is ignored. Norms, activations,
    rotary embeddings, softmax and the optimizer are not counted.
    """
    d, f, v = model_config.hidden_size, model_config.intermediate_size, model_config.vocab_size
    rows = min(seq_len, max_predictions) if last_layer_rows is None else last_layer_rows

    def layer(layer_type: str, query_rows: int) -> float:
        window = model_config.sliding_window if layer_type == "sliding_attention" else None
        qkv = seq_len * 6 * 3 * d * d
        per_query = 6 * (d * d + 3 * d * f) + 3 * 2 * 2 * keys_per_query(seq_len, window) * d
        return batch * (qkv + query_rows * per_query)

    types = model_config.layer_types
    encoder = sum(layer(t, seq_len) for t in types[:-1]) + layer(types[-1], rows)
    head = batch * max_predictions * 6 * (d * d + d * v)
    return float(encoder + head)
