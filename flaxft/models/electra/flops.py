"""Model FLOPs of an ELECTRA masked-LM (generator) pretraining step, for MFU."""

from flaxft.models.bert.flops import train_flops as bert_train_flops
from flaxft.models.electra.configuration import ElectraConfig


def train_flops(model_config: ElectraConfig, batch: int, seq_len: int, max_predictions: int, with_nsp: bool,
                last_layer_rows: int | None = None) -> float:
    """BERT's count (`flaxft.models.bert.flops.train_flops`) with ELECTRA's differences:
    the embeddings projection E x D at every token, and the generator head D x E + E x V
    (instead of D x D + D x V) at the masked positions; 6 FLOPs per weight per row."""
    d, e, v = model_config.hidden_size, model_config.embedding_size, model_config.vocab_size
    flops = bert_train_flops(model_config, batch, seq_len, max_predictions, with_nsp, last_layer_rows)
    flops += batch * max_predictions * 6 * ((d * e + e * v) - (d * d + d * v))
    if e != d:
        flops += batch * seq_len * 6 * e * d
    return float(flops)
