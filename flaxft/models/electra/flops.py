"""Model FLOPs of an ELECTRA pretraining step (generator + discriminator), for MFU."""

from flaxft.models.bert.flops import train_flops as bert_train_flops
from flaxft.models.electra.configuration import ElectraConfig


def train_flops(model_config: ElectraConfig, batch: int, seq_len: int, max_predictions: int, with_nsp: bool,
                last_layer_rows: int | None = None) -> float:
    """Model FLOPs of one replaced-token-detection step (forward + backward): the
    generator (`model_config.generator_config()`) as a masked LM scored at
    `max_predictions` positions per row (`masked_lm_flops`, its last layer at
    `last_layer_rows`), and the discriminator at every token (`discriminator_flops`).
    ELECTRA has no next-sentence head: `with_nsp` is ignored. Conventions as in
    `flaxft.models.bert.flops.train_flops`."""
    generator = masked_lm_flops(model_config.generator_config(), batch, seq_len, max_predictions, last_layer_rows)
    return generator + discriminator_flops(model_config, batch, seq_len)


def masked_lm_flops(config: ElectraConfig, batch: int, seq_len: int, max_predictions: int,
                    last_layer_rows: int | None = None) -> float:
    """`ElectraForMaskedLM`: BERT's count with ELECTRA's differences: the embeddings
    projection E x D at every token, and the generator head D x E + E x V (instead of
    D x D + D x V) at the masked positions; 6 FLOPs per weight per row."""
    d, e, v = config.hidden_size, config.embedding_size, config.vocab_size
    flops = bert_train_flops(config, batch, seq_len, max_predictions, False, last_layer_rows)
    flops += batch * max_predictions * 6 * ((d * e + e * v) - (d * d + d * v))
    return float(flops + _projection(config, batch, seq_len))


def discriminator_flops(config: ElectraConfig, batch: int, seq_len: int) -> float:
    """`ElectraForPreTraining`: every layer at every token, the embeddings projection and
    the discriminator head D x D + D x 1 at every token."""
    d = config.hidden_size
    flops = bert_train_flops(config, batch, seq_len, 0, False, last_layer_rows=seq_len)
    flops += batch * seq_len * 6 * (d * d + d)
    return float(flops + _projection(config, batch, seq_len))


def _projection(config: ElectraConfig, batch: int, seq_len: int) -> int:
    e, d = config.embedding_size, config.hidden_size
    return batch * seq_len * 6 * e * d if e != d else 0
