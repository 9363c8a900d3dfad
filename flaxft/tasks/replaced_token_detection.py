"""ELECTRA pretraining: replaced-token detection (Clark et al. 2020).

The generator is trained as a masked LM on the masked positions; the discriminator reads
the row with the generator's samples at those positions and classifies every real token
as original or replaced (a sample equal to the original token counts as original). Loss
= generator MLM cross-entropy + `discriminator_weight` x the discriminator's mean binary
cross-entropy over real tokens. Batch fields are those of `flaxft.data.PretrainLoader`:
B rows of length L with M masked positions each; the model is the family's "pretraining"
head (`flaxft.models.electra.ElectraGeneratorDiscriminator`).
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax

from flaxft.models import EncoderOutput

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "segment_ids", "masked_positions",
                "masked_weights")


@dataclasses.dataclass(frozen=True)
class ReplacedTokenDetection:
    """The `flaxft.contracts.Task` of ELECTRA pretraining."""

    discriminator_weight: float = 50.0
    head = "pretraining"  # the generator + discriminator model
    next_sentence = False

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "ReplacedTokenDetection":
        return cls(discriminator_weight=config.pretraining.discriminator_weight)

    def model_inputs(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return {k: batch[k] for k in MODEL_INPUTS}

    def normalizers(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Whole-batch denominators: predicted (masked) tokens, real tokens and rows."""
        return {
            "masked": jnp.maximum(batch["masked_weights"].sum(), 1.0),
            "tokens": jnp.maximum(batch["attention_mask"].sum().astype(jnp.float32), 1.0),
            "rows": jnp.asarray(batch["input_ids"].shape[0], jnp.float32),
        }

    def loss_and_metrics(
        self, out: EncoderOutput, batch: dict[str, jax.Array], norm: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Loss and metrics, each this batch's share of the whole-batch value. Precision
        and recall are ratios of whole-batch totals, so this gives their parts (flagged
        tokens and true positives as fractions of real tokens) and `summarize` divides.

        out.mlm_logits [B, M, V], out.sampled_ids [B, M], out.logits [B, L];
        batch["masked_positions"], ["masked_labels"], ["masked_weights"] [B, M],
        batch["attention_mask"] [B, L].
        """
        weights_BM = batch["masked_weights"]
        labels_BM = batch["masked_labels"]
        mlm_ce_BM = optax.softmax_cross_entropy_with_integer_labels(out.mlm_logits, labels_BM)
        mlm_correct_BM = jnp.argmax(out.mlm_logits, -1) == labels_BM
        mlm_loss = jnp.sum(mlm_ce_BM * weights_BM) / norm["masked"]

        real_BL = batch["attention_mask"].astype(jnp.float32)
        replaced_BL = replaced_tokens(out.sampled_ids, labels_BM, weights_BM, batch["masked_positions"],
                                      batch["input_ids"].shape)
        rtd_ce_BL = optax.sigmoid_binary_cross_entropy(out.logits, replaced_BL.astype(jnp.float32))
        rtd_loss = jnp.sum(rtd_ce_BL * real_BL) / norm["tokens"]
        predicted_BL = out.logits > 0
        hits = jnp.sum(predicted_BL * replaced_BL * real_BL)

        loss = mlm_loss + self.discriminator_weight * rtd_loss
        metrics = {
            "loss": loss,
            "mlm_loss": mlm_loss,
            "mlm_accuracy": jnp.sum(mlm_correct_BM * weights_BM) / norm["masked"],
            "rtd_loss": rtd_loss,
            "rtd_accuracy": jnp.sum((predicted_BL == replaced_BL) * real_BL) / norm["tokens"],
            "rtd_replaced_fraction": jnp.sum(replaced_BL * real_BL) / norm["tokens"],
            "rtd_flagged_fraction": jnp.sum(predicted_BL * real_BL) / norm["tokens"],
            "rtd_hit_fraction": hits / norm["tokens"],
        }
        return loss, metrics

    def summarize(self, metrics: dict[str, float]) -> dict[str, float]:
        """Host side, on whole-batch (or averaged) metrics: precision and recall on replaced
        tokens from their parts (0 when nothing is flagged or replaced)."""
        metrics = dict(metrics)
        hits, flagged = metrics.pop("rtd_hit_fraction"), metrics.pop("rtd_flagged_fraction")
        metrics["rtd_precision"] = hits / flagged if flagged > 0 else 0.0
        metrics["rtd_recall"] = hits / metrics["rtd_replaced_fraction"] if metrics["rtd_replaced_fraction"] > 0 else 0.0
        return metrics

    def eval_outputs(self, out: EncoderOutput, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The batch's loss and metrics (averaged over the evaluation's batches, then
        summarized)."""
        return self.loss_and_metrics(out, batch, self.normalizers(batch))[1]


def replaced_tokens(sampled_BM: jax.Array, labels_BM: jax.Array, weights_BM: jax.Array, positions_BM: jax.Array,
                    shape: tuple[int, int]) -> jax.Array:
    """[B, L] bool: True where the discriminator's input differs from the original row
    (a real masked position whose sample is not the original token)."""
    changed_BM = (sampled_BM != labels_BM) & (weights_BM > 0)
    rows_B1 = jnp.arange(shape[0])[:, None]
    return jnp.zeros(shape, bool).at[rows_B1, positions_BM].max(changed_BM)
