"""RoBERTa and XLM-RoBERTa with each Hugging Face head: masked LM, sequence classification
(dense + tanh + out_proj on <s>), token classification and extractive QA.

Every architecture keeps the encoder under `params["roberta"]`. XLM-RoBERTa's classes are
RoBERTa's under transformers' names for them. Shape suffixes as in
`flaxft.models.bert.encoder`; M is the number of masked positions per row.
"""

import flax.linen as nn
import jax

from flaxft.models.heads import (
    EncoderWithHead,
    FirstTokenClassification,
    QuestionAnswering,
    TokenClassification,
    vocabulary_logits,
)
from flaxft.models.layers import activation, dense, layer_norm
from flaxft.models.roberta.configuration import RobertaConfig
from flaxft.models.roberta.encoder import RobertaModule

Array = jax.Array


class RobertaLMHead(nn.Module):
    """dense, gelu, layer_norm, then vocabulary scores plus a bias; the decoder is the word
    embedding matrix when `tie_word_embeddings` (RoBERTa's default), else its own."""

    config: RobertaConfig

    @nn.compact
    def __call__(self, x_BMD: Array, encoder: RobertaModule) -> Array:
        """Vocabulary logits [B, M, V] in float32 for hidden states x [B, M, D]."""
        cfg = self.config
        h_BMD = dense(cfg, cfg.hidden_size, ("embed", "hidden"), ("hidden",), "dense")(x_BMD)
        h_BMD = layer_norm(cfg, "layer_norm")(activation("gelu")(h_BMD))
        return vocabulary_logits(self, cfg, h_BMD, encoder)


class _RobertaWithHead(EncoderWithHead):
    """RoBERTa's heads keep the encoder under `roberta`."""

    encoder_key = "roberta"
    encoder_class = RobertaModule


class RobertaModel(_RobertaWithHead):
    """The bare encoder: last_hidden_state [B, L, D] and pooler_output [B, D]."""


class RobertaForMaskedLM(_RobertaWithHead):
    """Masked LM: mlm_logits."""

    add_pooling_layer = False
    has_mlm_head = True

    def setup_head(self):
        self.lm_head = RobertaLMHead(self.config)

    def head(self, out, deterministic, cls_positions):
        return out.replace(mlm_logits=self.lm_head(out.last_hidden_state, self.roberta))


class RobertaForSequenceClassification(_RobertaWithHead, FirstTokenClassification):
    """Classifier on <s>: logits [B, num_labels] (regression if 1 label), or [B, K,
    num_labels] for K packed segments per row."""


class RobertaForTokenClassification(_RobertaWithHead, TokenClassification):
    """A label per token: logits [B, L, num_labels]."""


class RobertaForQuestionAnswering(_RobertaWithHead, QuestionAnswering):
    """Span scores: start_logits and end_logits [B, L]."""


class XLMRobertaModel(RobertaModel):
    """XLM-RoBERTa's bare encoder (RoBERTa's network)."""


class XLMRobertaForMaskedLM(RobertaForMaskedLM):
    """XLM-RoBERTa masked LM."""


class XLMRobertaForSequenceClassification(RobertaForSequenceClassification):
    """XLM-RoBERTa sequence classification."""


class XLMRobertaForTokenClassification(RobertaForTokenClassification):
    """XLM-RoBERTa token classification."""


class XLMRobertaForQuestionAnswering(RobertaForQuestionAnswering):
    """XLM-RoBERTa extractive QA."""
