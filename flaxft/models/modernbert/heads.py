"""ModernBERT with each Hugging Face head: masked LM, sequence classification (the
pooled state through the prediction head), token classification and extractive QA (the
prediction head on every token).

Every architecture keeps the encoder under `params["model"]`; transformers' `head` (the
prediction head) is `params["prediction_head"]` (`head` names the method every flaxft
model fills its outputs with). Shape suffixes as in
`flaxft.models.modernbert.encoder`; M is the number of masked positions per row.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxft.models.dropout import Dropout
from flaxft.models.heads import EncoderWithHead, vocabulary_logits
from flaxft.models.layers import activation, dense
from flaxft.models.modernbert.configuration import ModernBertConfig
from flaxft.models.modernbert.encoder import ModernBertModule, init_stds, norm

Array = jax.Array


class ModernBertPredictionHead(nn.Module):
    """dense (a bias with classifier_bias), classifier_activation, norm: D -> D."""

    config: ModernBertConfig

    @nn.compact
    def __call__(self, x_BXD: Array) -> Array:
        cfg = self.config
        bias = ("hidden",) if cfg.classifier_bias else None
        h_BXD = dense(cfg, cfg.hidden_size, ("embed", "hidden"), bias, "dense", init_std=init_stds(cfg)["out"])(x_BXD)
        return norm(cfg, "norm")(activation(cfg.classifier_activation)(h_BXD))


class ModernBertDecoder(nn.Module):
    """Vocabulary scores: the token embeddings (tied) or its own kernel, plus a bias with
    decoder_bias."""

    config: ModernBertConfig

    @nn.compact
    def __call__(self, h_BMD: Array, encoder: ModernBertModule) -> Array:
        """[B, M, V] float32."""
        cfg = self.config
        return vocabulary_logits(self, cfg, h_BMD, encoder, use_bias=cfg.decoder_bias, init_std=init_stds(cfg)["out"])


class _ModernBertWithHead(EncoderWithHead):
    """ModernBERT's heads keep the encoder under `model`; it has no pooler."""

    encoder_key = "model"
    encoder_class = ModernBertModule
    add_pooling_layer = False

    def setup_classifier(self):
        """Prediction head, dropout (classifier_dropout) and a D -> `features` classifier."""
        cfg = self.config
        self.prediction_head = ModernBertPredictionHead(cfg)
        self.drop = Dropout(cfg.classifier_dropout)
        self.classifier = dense(cfg, self.classifier_features, ("embed", "classes"), ("classes",), "classifier",
                                init_std=init_stds(cfg)["final_out"])

    @property
    def classifier_features(self) -> int:
        return self.config.num_labels

    def classify(self, x_BXD: Array, deterministic: bool) -> Array:
        """classifier(drop(head(x))) in float32."""
        return self.classifier(self.drop(self.prediction_head(x_BXD), deterministic)).astype(jnp.float32)


class ModernBertModel(_ModernBertWithHead):
    """The bare encoder: last_hidden_state [B, L, D]."""


class ModernBertForMaskedLM(_ModernBertWithHead):
    """Masked LM: mlm_logits [B, L, V], or [B, M, V] at masked_positions."""

    has_mlm_head = True

    def setup_head(self):
        self.prediction_head = ModernBertPredictionHead(self.config)
        self.decoder = ModernBertDecoder(self.config)

    def head(self, out, deterministic, cls_positions):
        return out.replace(mlm_logits=self.decoder(self.prediction_head(out.last_hidden_state), self.model))


class ModernBertForSequenceClassification(_ModernBertWithHead):
    """Classifier on the pooled state (classifier_pooling "cls" or "mean"): logits
    [B, num_labels] (regression if 1 label), or [B, K, num_labels] for K packed segments."""

    add_pooling_layer = True

    def setup_head(self):
        self.setup_classifier()

    def head(self, out, deterministic, cls_positions):
        return out.replace(logits=self.classify(out.pooler_output, deterministic))


class ModernBertForTokenClassification(_ModernBertWithHead):
    """A label per token: logits [B, L, num_labels]."""

    def setup_head(self):
        self.setup_classifier()

    def head(self, out, deterministic, cls_positions):
        return out.replace(logits=self.classify(out.last_hidden_state, deterministic))


class ModernBertForQuestionAnswering(_ModernBertWithHead):
    """Span scores: start_logits and end_logits [B, L]."""

    classifier_features = 2

    def setup_head(self):
        self.setup_classifier()

    def head(self, out, deterministic, cls_positions):
        logits_BL2 = self.classify(out.last_hidden_state, deterministic)
        return out.replace(start_logits=logits_BL2[..., 0], end_logits=logits_BL2[..., 1])
