"""Pretraining: masked language modelling, plus next-sentence prediction in BERT's format.

Losses are written as sums over the batch divided by whole-batch normalizers, so summing
the terms of several microbatches gives exactly the loss of the whole batch (gradient
accumulation changes nothing but memory). Batch fields are those of
`flaxft.data.PretrainLoader`: B rows of length L with M masked positions each.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax

from flaxft.models import EncoderOutput

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "segment_ids", "masked_positions")


@dataclasses.dataclass(frozen=True)
class Pretraining:
    """Masked LM (+ NSP with `next_sentence`): the `flaxft.contracts.Task` of a pretraining run."""

    next_sentence: bool

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "Pretraining":
        """NSP when data.format is "bert" (sentence pairs)."""
        return cls(next_sentence=config.data.format == "bert")

    @property
    def head(self) -> str:
        """The head role the model needs: MLM + NSP ("pretraining") or MLM alone."""
        return "pretraining" if self.next_sentence else "masked_lm"

    def model_inputs(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return {k: batch[k] for k in MODEL_INPUTS}

    def normalizers(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Whole-batch denominators: the number of predicted tokens and of rows."""
        return {
            "masked": jnp.maximum(batch["masked_weights"].sum(), 1.0),
            "rows": jnp.asarray(batch["input_ids"].shape[0], jnp.float32),
        }

    def loss_and_metrics(
        self, out: EncoderOutput, batch: dict[str, jax.Array], norm: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Loss (MLM cross-entropy over masked positions, plus NSP cross-entropy when the
        model has an NSP head) and metrics, each this batch's share of the whole-batch value.

        out.mlm_logits [B, M, V] at batch["masked_positions"]; batch["masked_labels"] [B, M],
        batch["masked_weights"] [B, M]; out.nsp_logits [B, 2], batch["next_sentence_label"] [B].
        """
        weights_BM = batch["masked_weights"]
        mlm_ce_BM = optax.softmax_cross_entropy_with_integer_labels(out.mlm_logits, batch["masked_labels"])
        correct_BM = jnp.argmax(out.mlm_logits, -1) == batch["masked_labels"]
        mlm_loss = jnp.sum(mlm_ce_BM * weights_BM) / norm["masked"]
        metrics = {
            "mlm_loss": mlm_loss,
            "mlm_accuracy": jnp.sum(correct_BM * weights_BM) / norm["masked"],
        }
        loss = mlm_loss
        if out.nsp_logits is not None:
            labels_B = batch["next_sentence_label"]
            nsp_loss = optax.softmax_cross_entropy_with_integer_labels(out.nsp_logits, labels_B).sum() / norm["rows"]
            metrics["nsp_loss"] = nsp_loss
            metrics["nsp_accuracy"] = jnp.sum(jnp.argmax(out.nsp_logits, -1) == labels_B) / norm["rows"]
            loss = loss + nsp_loss
        metrics["loss"] = loss
        return loss, metrics

    def eval_outputs(self, out: EncoderOutput, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The batch's loss and metrics (averaged over the evaluation's batches)."""
        return self.loss_and_metrics(out, batch, self.normalizers(batch))[1]
