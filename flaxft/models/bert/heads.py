"""BERT with each Hugging Face head: pretraining (MLM + NSP), masked LM, sequence
classification, token classification and extractive QA.

Every architecture keeps the encoder under `params["bert"]`, so encoder weights move
between heads unchanged. Shape suffixes as in `flaxft.models.bert.encoder`; M is the number of
masked positions per row.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxft.models.bert.configuration import BertConfig
from flaxft.models.bert.encoder import BertModule
from flaxft.models.heads import EncoderWithHead, QuestionAnswering, TokenClassification, vocabulary_logits
from flaxft.models.layers import activation, dense, layer_norm

Array = jax.Array


class BertMLMHead(nn.Module):
    """Transform (dense, activation, LayerNorm) then vocabulary scores plus a bias.

    The decoder is the word embedding matrix when `tie_word_embeddings` (BERT's default),
    else its own D x V kernel.
    """

    config: BertConfig

    @nn.compact
    def __call__(self, x_BMD: Array, bert: BertModule) -> Array:
        """Vocabulary logits [B, M, V] in float32 for hidden states x [B, M, D]."""
        cfg = self.config
        h_BMD = dense(cfg, cfg.hidden_size, ("embed", "hidden"), ("hidden",), "transform")(x_BMD)
        h_BMD = layer_norm(cfg, "LayerNorm")(activation(cfg.hidden_act)(h_BMD))
        return vocabulary_logits(self, cfg, h_BMD, bert)


class _BertWithHead(EncoderWithHead):
    """BERT's heads keep the encoder under `bert`."""

    encoder_key = "bert"
    encoder_class = BertModule


class BertModel(_BertWithHead):
    """The bare encoder: last_hidden_state [B, L, D] and pooler_output [B, D]."""


class BertForPreTraining(_BertWithHead):
    """Masked LM and next-sentence prediction: mlm_logits and nsp_logits [B, 2]."""

    has_mlm_head = True

    def setup_head(self):
        self.mlm = BertMLMHead(self.config)
        self.nsp = dense(self.config, 2, ("embed", "classes"), ("classes",), "nsp")

    def head(self, out, deterministic, cls_positions):
        nsp_B2 = self.nsp(out.pooler_output).astype(jnp.float32)
        return out.replace(mlm_logits=self.mlm(out.last_hidden_state, self.bert), nsp_logits=nsp_B2)


class BertForMaskedLM(_BertWithHead):
    """Masked LM without NSP or pooler: mlm_logits."""

    add_pooling_layer = False
    has_mlm_head = True

    def setup_head(self):
        self.mlm = BertMLMHead(self.config)

    def head(self, out, deterministic, cls_positions):
        return out.replace(mlm_logits=self.mlm(out.last_hidden_state, self.bert))


class BertForSequenceClassification(_BertWithHead):
    """Classifier on the pooled first token: logits [B, num_labels] (regression if 1 label),
    or [B, K, num_labels] for K packed segments per row."""

    def setup_head(self):
        self.setup_classifier()

    def head(self, out, deterministic, cls_positions):
        pooled_BD = self.dropout(out.pooler_output, deterministic)
        return out.replace(logits=self.classifier(pooled_BD).astype(jnp.float32))


class BertForTokenClassification(_BertWithHead, TokenClassification):
    """A label per token: logits [B, L, num_labels]."""


class BertForQuestionAnswering(_BertWithHead, QuestionAnswering):
    """Span scores: start_logits and end_logits [B, L]."""
