"""Model FLOPs of a BERT pretraining step, the numerator of MFU (`flaxft.bench`)."""

from flaxft.models.bert.configuration import BertConfig


def train_flops(
    model_config: BertConfig,
    batch: int,
    seq_len: int,
    max_predictions: int,
    with_nsp: bool,
    last_layer_rows: int | None = None,
) -> float:
    """Model FLOPs of one training step (forward + backward) of a BERT encoder with an MLM
    head scored at `max_predictions` positions per row, plus the pooler and NSP head when
    `with_nsp`.

    A matmul of an [n, k] activation with a [k, m] weight costs 2nkm FLOPs forward (a
    multiply and an add per term) and 4nkm backward (gradient of the activation and of the
    weight): 6 FLOPs per weight per row it is applied to. With D = hidden_size,
    F = intermediate_size, V = vocab_size, L = seq_len, M = max_predictions, per token:

    - encoder weights, per layer: query, key, value and attention output projections
      4 D^2, MLP D F + F D = 2 D F; so 6 (4 D^2 + 2 D F) per layer.
    - attention scores Q K^T and context P V: each 2 L D per token per layer forward
      (every query meets all L keys in every head: N heads x H = D; an encoder attends
      in both directions, so no causal halving), x3 for forward + backward: 12 L D.
    - embeddings: lookups (gathers, and scatter-adds backward), not matmuls: 0.

    The loss reads the last layer only at the M masked positions and the pooled first
    token, so the last layer's query, attention, output projection and MLP are counted
    at `last_layer_rows` = min(L, M + 1 with NSP, else M) rows per row of the batch (its
    keys and values at all L): the work the model needs. `last_layer_rows=L` counts a
    last layer that computes every row (scan_layers does).

    Per masked position (M per row; BERT scores the vocabulary only there):
    - MLM transform D x D and decoder D x V (the tied word embeddings): 6 (D^2 + D V).
      Per row when `with_nsp`: pooler D x D on the first token and NSP D x 2: 6 (D^2 + 2 D).

    Biases, LayerNorm, activations, softmax, dropout, losses and the optimizer update are
    O(parameters + activations), a rounding error next to these, and not counted (as in
    the PaLM / MaxText MFU convention). Remat recomputation is not model work: not counted.

    Returns FLOPs per step for `batch` rows of `seq_len` tokens.
    """
    d, f, v = model_config.hidden_size, model_config.intermediate_size, model_config.vocab_size
    if last_layer_rows is None:
        last_layer_rows = min(seq_len, max_predictions + (1 if with_nsp else 0))

    def layer(query_rows: int) -> int:
        keys_values = seq_len * 6 * 2 * d * d
        per_query = 6 * (2 * d * d + 2 * d * f) + 3 * 2 * 2 * seq_len * d
        return batch * (keys_values + query_rows * per_query)

    encoder = (model_config.num_hidden_layers - 1) * layer(seq_len) + layer(last_layer_rows)
    mlm = batch * max_predictions * 6 * (d * d + d * v)
    nsp = batch * 6 * (d * d + 2 * d) if with_nsp else 0
    return float(encoder + mlm + nsp)
