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
from flaxft.models.dropout import Dropout
from flaxft.models.family import EncoderOutput
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
        if cfg.tie_word_embeddings:
            logits_BMV = bert.attend(h_BMD)
        else:
            decoder = dense(cfg, cfg.vocab_size, ("embed", "vocab"), None, "decoder")
            logits_BMV = decoder(h_BMD)
        bias_V = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
            (cfg.vocab_size,),
            cfg.weights_dtype,
        )
        logits_BMV = logits_BMV.astype(jnp.float32) + bias_V.astype(jnp.float32)
        return nn.with_logical_constraint(
            logits_BMV, ("activation_batch", "activation_length", "activation_vocab")
        )


class _BertWithHead(nn.Module):
    """Shared plumbing: the encoder under `bert`, one call signature, a `head` per subclass."""

    config: BertConfig
    add_pooling_layer = True
    has_mlm_head = False

    def setup(self):
        self.bert = BertModule(self.config, add_pooling_layer=self.add_pooling_layer)
        self.setup_head()

    def setup_head(self):
        """Creates the head's submodules."""

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        position_ids: Array | None = None,
        segment_ids: Array | None = None,
        masked_positions: Array | None = None,
        deterministic: bool = True,
        cls_positions: Array | None = None,
    ) -> EncoderOutput:
        """Encodes input_ids [B, L] and applies the head.

        attention_mask, token_type_ids, position_ids, segment_ids: [B, L], see
        `BertModule.__call__`. masked_positions [B, M]: MLM heads score the vocabulary
        only there (mlm_logits [B, M, V]; last_hidden_state is then [B, M, D] and the last
        layer computes only those rows); without it, at every position ([B, L, V]).
        deterministic: False turns dropout on (needs a "dropout" rng).
        cls_positions [B, K]: first token of each packed segment; heads on the pooler then
        give one output per segment (sequence classification: logits [B, K, num_labels]).
        """
        if masked_positions is not None and not self.has_mlm_head:
            raise ValueError(f"{type(self).__name__} has no MLM head to take masked_positions")
        out = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            segment_ids,
            deterministic,
            cls_positions,
            output_positions_BM=masked_positions,
        )
        return self.head(out, deterministic)

    def head(self, out: EncoderOutput, deterministic: bool) -> EncoderOutput:
        return out

    def setup_classifier(self):
        """Dropout (classifier_dropout, else hidden_dropout_prob) and a D -> num_labels dense."""
        cfg = self.config
        rate = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
        self.dropout = Dropout(rate)
        self.classifier = dense(cfg, cfg.num_labels, ("embed", "classes"), ("classes",), "classifier")


class BertModel(_BertWithHead):
    """The bare encoder: last_hidden_state [B, L, D] and pooler_output [B, D]."""


class BertForPreTraining(_BertWithHead):
    """Masked LM and next-sentence prediction: mlm_logits and nsp_logits [B, 2]."""

    has_mlm_head = True

    def setup_head(self):
        self.mlm = BertMLMHead(self.config)
        self.nsp = dense(self.config, 2, ("embed", "classes"), ("classes",), "nsp")

    def head(self, out, deterministic):
        nsp_B2 = self.nsp(out.pooler_output).astype(jnp.float32)
        return out.replace(mlm_logits=self.mlm(out.last_hidden_state, self.bert), nsp_logits=nsp_B2)


class BertForMaskedLM(_BertWithHead):
    """Masked LM without NSP or pooler: mlm_logits."""

    add_pooling_layer = False
    has_mlm_head = True

    def setup_head(self):
        self.mlm = BertMLMHead(self.config)

    def head(self, out, deterministic):
        return out.replace(mlm_logits=self.mlm(out.last_hidden_state, self.bert))


class BertForSequenceClassification(_BertWithHead):
    """Classifier on the pooled first token: logits [B, num_labels] (regression if 1 label),
    or [B, K, num_labels] for K packed segments per row."""

    def setup_head(self):
        self.setup_classifier()

    def head(self, out, deterministic):
        pooled_BD = self.dropout(out.pooler_output, deterministic)
        return out.replace(logits=self.classifier(pooled_BD).astype(jnp.float32))


class BertForTokenClassification(_BertWithHead):
    """A label per token: logits [B, L, num_labels]."""

    add_pooling_layer = False

    def setup_head(self):
        self.setup_classifier()

    def head(self, out, deterministic):
        x_BLD = self.dropout(out.last_hidden_state, deterministic)
        return out.replace(logits=self.classifier(x_BLD).astype(jnp.float32))


class BertForQuestionAnswering(_BertWithHead):
    """Span scores: start_logits and end_logits [B, L]."""

    add_pooling_layer = False

    def setup_head(self):
        self.qa_outputs = dense(self.config, 2, ("embed", "classes"), ("classes",), "qa_outputs")

    def head(self, out, deterministic):
        logits_BL2 = self.qa_outputs(out.last_hidden_state).astype(jnp.float32)
        return out.replace(start_logits=logits_BL2[..., 0], end_logits=logits_BL2[..., 1])
