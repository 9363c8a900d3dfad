"""ELECTRA with each Hugging Face head: the discriminator (replaced-token detection), the
generator (masked LM), sequence classification (dense + gelu + out_proj on the first
token), token classification and extractive QA.

Every architecture keeps the encoder under `params["electra"]`. Shape suffixes as in
`flaxft.models.bert.encoder`; E embedding size, M masked positions per row.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxft.models.electra.configuration import ElectraConfig
from flaxft.models.electra.encoder import ElectraModule
from flaxft.models.heads import (
    EncoderWithHead,
    FirstTokenClassification,
    QuestionAnswering,
    TokenClassification,
    vocabulary_logits,
)
from flaxft.models.layers import activation, dense, layer_norm

Array = jax.Array


class _ElectraWithHead(EncoderWithHead):
    """ELECTRA's heads keep the encoder under `electra`; it has no pooler."""

    encoder_key = "electra"
    encoder_class = ElectraModule
    add_pooling_layer = False


class ElectraModel(_ElectraWithHead):
    """The bare encoder: last_hidden_state [B, L, D]."""


class ElectraForPreTraining(_ElectraWithHead):
    """The discriminator: logits [B, L], a token's score for having been replaced."""

    def setup_head(self):
        self.discriminator_predictions = DiscriminatorPredictions(self.config)

    def head(self, out, deterministic, cls_positions):
        return out.replace(logits=self.discriminator_predictions(out.last_hidden_state))


class DiscriminatorPredictions(nn.Module):
    """dense D -> D, the config's activation, dense_prediction D -> 1."""

    config: ElectraConfig

    @nn.compact
    def __call__(self, x_BLD: Array) -> Array:
        """Per-token logits [B, L] in float32."""
        cfg = self.config
        h_BLD = activation(cfg.hidden_act)(dense(cfg, cfg.hidden_size, ("embed", "hidden"), ("hidden",), "dense")(x_BLD))
        return dense(cfg, 1, ("hidden", "classes"), ("classes",), "dense_prediction")(h_BLD)[..., 0].astype(jnp.float32)


class ElectraForMaskedLM(_ElectraWithHead):
    """The generator: mlm_logits from generator_predictions (dense D -> E, gelu, LayerNorm)
    and generator_lm_head (the word embeddings when tied, plus a bias)."""

    has_mlm_head = True

    def setup_head(self):
        self.generator_predictions = GeneratorPredictions(self.config)
        self.generator_lm_head = GeneratorLMHead(self.config)

    def head(self, out, deterministic, cls_positions):
        h_BME = self.generator_predictions(out.last_hidden_state)
        return out.replace(mlm_logits=self.generator_lm_head(h_BME, self.electra))


class GeneratorLMHead(nn.Module):
    """Vocabulary scores of E-wide states plus a bias: against the word embeddings when
    `tie_word_embeddings` (ELECTRA's default), else with its own E x V kernel."""

    config: ElectraConfig

    @nn.compact
    def __call__(self, h_BME: Array, encoder: ElectraModule) -> Array:
        """Logits [B, M, V] in float32."""
        return vocabulary_logits(self, self.config, h_BME, encoder)


class GeneratorPredictions(nn.Module):
    """dense D -> E, gelu, LayerNorm over E."""

    config: ElectraConfig

    @nn.compact
    def __call__(self, x_BMD: Array) -> Array:
        """States [B, M, E] for the vocabulary scores, from the encoder's [B, M, D]."""
        cfg = self.config
        h_BME = dense(cfg, cfg.embedding_size, ("hidden", "embed"), ("embed",), "dense")(x_BMD)
        return layer_norm(cfg, "LayerNorm")(activation("gelu")(h_BME))


class ElectraForSequenceClassification(_ElectraWithHead, FirstTokenClassification):
    """Classifier on the first token, gelu between its dense layers: logits [B,
    num_labels] (regression if 1 label), or [B, K, num_labels] for K packed segments."""

    classifier_activation = "gelu"


class ElectraForTokenClassification(_ElectraWithHead, TokenClassification):
    """A label per token: logits [B, L, num_labels]."""


class ElectraForQuestionAnswering(_ElectraWithHead, QuestionAnswering):
    """Span scores: start_logits and end_logits [B, L]."""
