"""What every family's heads share: the encoder under the family's parameter key, one
call signature, and a `head` per subclass (see docs/adding_a_family.md).

Shape suffixes: B batch, L sequence length, D hidden size, M masked positions per row,
K packed segments per row. The generic heads (token classification, QA, the first-token
classifier) are mixed into a family's base class (`class BertForTokenClassification(
_BertWithHead, TokenClassification)`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxft.models.dropout import Dropout
from flaxft.models.family import EncoderOutput, ModelConfig
from flaxft.models.layers import activation, dense, gather_positions

Array = jax.Array


class EncoderWithHead(nn.Module):
    """An encoder (`encoder_class`, kept under the parameter key `encoder_key`) and a head.

    Subclasses set `encoder_key`, `encoder_class` (a module taking `(config,
    add_pooling_layer)` and called like `flaxft.models.bert.BertModule`), whether the
    encoder keeps its pooler, whether the head scores masked positions, and define
    `setup_head` and `head`."""

    config: ModelConfig
    encoder_key = "encoder"
    encoder_class = None  # a class attribute, as the others (not a dataclass field)
    add_pooling_layer = True
    has_mlm_head = False

    def setup(self):
        setattr(self, self.encoder_key, self.encoder_class(self.config, add_pooling_layer=self.add_pooling_layer))
        self.setup_head()

    @property
    def encoder_module(self) -> nn.Module:
        return getattr(self, self.encoder_key)

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

        attention_mask, token_type_ids, position_ids, segment_ids: [B, L], see the
        encoder's `__call__`. masked_positions [B, M]: MLM heads score the vocabulary
        only there (mlm_logits [B, M, V]; last_hidden_state is then [B, M, D] and the last
        layer computes only those rows); without it, at every position ([B, L, V]).
        deterministic: False turns dropout on (needs a "dropout" rng).
        cls_positions [B, K]: first token of each packed segment; sequence-level heads
        then give one output per segment (sequence classification: logits [B, K, num_labels]).
        """
        if masked_positions is not None and not self.has_mlm_head:
            raise ValueError(f"{type(self).__name__} has no MLM head to take masked_positions")
        out = self.encoder_module(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            segment_ids,
            deterministic,
            cls_positions if self.add_pooling_layer else None,
            output_positions_BM=masked_positions,
        )
        return self.head(out, deterministic, cls_positions)

    def head(self, out: EncoderOutput, deterministic: bool, cls_positions: Array | None) -> EncoderOutput:
        """The head's outputs filled into the encoder's `out` (bare encoder: `out` itself)."""
        return out

    def setup_classifier(self):
        """Dropout (classifier_dropout, else hidden_dropout_prob) and a D -> num_labels dense."""
        cfg = self.config
        rate = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
        self.dropout = Dropout(rate)
        self.classifier = dense(cfg, cfg.num_labels, ("embed", "classes"), ("classes",), "classifier")


def vocabulary_logits(module: nn.Module, config: ModelConfig, h_BMX: Array, encoder: nn.Module,
                      use_bias: bool = True, init_std: float | None = None) -> Array:
    """Every family's MLM decoder: vocabulary scores [B, M, V] (float32) of states h [B, M,
    X] (X: the word embeddings' width) plus a bias `module` owns (unless not `use_bias`),
    against the encoder's word embeddings when `config.tie_word_embeddings`, else through
    `module`'s own `decoder` kernel X x V (initialised with `init_std`). Call it inside
    `module`'s compact `__call__`."""
    if config.tie_word_embeddings:
        logits_BMV = encoder.attend(h_BMX).astype(jnp.float32)
    else:
        logits_BMV = dense(config, config.vocab_size, ("embed", "vocab"), None, "decoder",
                           init_std=init_std)(h_BMX).astype(jnp.float32)
    if use_bias:
        bias_V = module.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
                              (config.vocab_size,), config.weights_dtype)
        logits_BMV = logits_BMV + bias_V.astype(jnp.float32)
    return nn.with_logical_constraint(logits_BMV, ("activation_batch", "activation_length", "activation_vocab"))


class TokenClassification(EncoderWithHead):
    """A label per token: logits [B, L, num_labels] (dropout and one dense layer)."""

    add_pooling_layer = False

    def setup_head(self):
        self.setup_classifier()

    def head(self, out, deterministic, cls_positions):
        x_BLD = self.dropout(out.last_hidden_state, deterministic)
        return out.replace(logits=self.classifier(x_BLD).astype(jnp.float32))


class QuestionAnswering(EncoderWithHead):
    """Span scores: start_logits and end_logits [B, L]."""

    add_pooling_layer = False

    def setup_head(self):
        self.qa_outputs = dense(self.config, 2, ("embed", "classes"), ("classes",), "qa_outputs")

    def head(self, out, deterministic, cls_positions):
        logits_BL2 = self.qa_outputs(out.last_hidden_state).astype(jnp.float32)
        return out.replace(start_logits=logits_BL2[..., 0], end_logits=logits_BL2[..., 1])


class FirstTokenClassifier(nn.Module):
    """RoBERTa's and ELECTRA's sequence classification head: on the first token's final
    state (or each packed segment's), dropout, dense D -> D, `activation`, dropout, and
    `out_proj` D -> num_labels."""

    config: ModelConfig
    activation: str

    @nn.compact
    def __call__(self, x_BLD: Array, cls_positions_BK: Array | None, deterministic: bool) -> Array:
        """Logits [B, num_labels], or [B, K, num_labels] at cls_positions [B, K]; float32."""
        cfg = self.config
        rate = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
        first_BKD = x_BLD[:, 0] if cls_positions_BK is None else gather_positions(x_BLD, cls_positions_BK)
        h_BKD = Dropout(rate)(first_BKD, deterministic)
        dense_BKD = dense(cfg, cfg.hidden_size, ("embed", "hidden"), ("hidden",), "dense")(h_BKD)
        h_BKD = Dropout(rate)(activation(self.activation)(dense_BKD), deterministic)
        return dense(cfg, cfg.num_labels, ("hidden", "classes"), ("classes",), "out_proj")(h_BKD).astype(jnp.float32)


class FirstTokenClassification(EncoderWithHead):
    """Sequence classification by `FirstTokenClassifier` (no pooler); subclasses name the
    activation: logits [B, num_labels] or [B, K, num_labels] for K packed segments."""

    add_pooling_layer = False
    classifier_activation = "tanh"

    def setup_head(self):
        self.classifier = FirstTokenClassifier(self.config, self.classifier_activation)

    def head(self, out, deterministic, cls_positions):
        return out.replace(logits=self.classifier(out.last_hidden_state, cls_positions, deterministic))

