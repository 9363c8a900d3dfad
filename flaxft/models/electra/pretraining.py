"""ELECTRA pretraining's model (replaced-token detection, Clark et al. 2020): a small
generator (a masked LM) and the discriminator, trained together and sharing embeddings.

The generator fills the masked positions with tokens sampled from its own predictions
(Gumbel-max); the discriminator reads the result and scores every token for having been
replaced. Parameters: the discriminator's tree (`ElectraForPreTraining`: `electra/`,
`discriminator_predictions/`) plus `generator/`, an `ElectraForMaskedLM` tree without
embeddings (it uses `electra/embeddings`). `hf_models` splits them into the two
Hugging Face models. Shape suffixes as in `flaxft.models.bert.encoder`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxft.models.electra.encoder import ElectraModule
from flaxft.models.electra.heads import ElectraForMaskedLM, ElectraForPreTraining
from flaxft.models.family import EncoderOutput

Array = jax.Array


class _SharedEmbeddingsGenerator(ElectraForMaskedLM):
    """`ElectraForMaskedLM` over embeddings owned by the discriminator."""

    embeddings: nn.Module | None = None

    def setup(self):
        self.electra = ElectraModule(self.config, add_pooling_layer=False, shared_embeddings=self.embeddings)
        self.setup_head()


class ElectraGeneratorDiscriminator(ElectraForPreTraining):
    """The generator (`config.generator_config()`) and the discriminator (`config`).

    Called like every head, plus masked_weights [B, M], required with masked_positions (1
    on real masked positions, 0 on padding entries of masked_positions, which are left as
    they are). Returns the
    discriminator's logits [B, L] on the generator's output, the generator's mlm_logits
    [B, M, V] and sampled_ids [B, M] (what the discriminator saw at the masked
    positions). Samples are drawn from the "dropout" rng when training; evaluation
    (deterministic) draws from a fixed key, so every evaluation sees the same samples.
    Without masked_positions the generator scores every position and nothing is replaced.
    """

    def setup_head(self):
        super().setup_head()
        self.generator = _SharedEmbeddingsGenerator(self.config.generator_config(), embeddings=self.electra.embeddings)

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
        masked_weights: Array | None = None,
    ) -> EncoderOutput:
        generated = self.generator(input_ids, attention_mask, token_type_ids, position_ids, segment_ids,
                                   masked_positions, deterministic)
        if masked_positions is None:
            out = super().__call__(input_ids, attention_mask, token_type_ids, position_ids, segment_ids,
                                   deterministic=deterministic)
            return out.replace(mlm_logits=generated.mlm_logits)
        if masked_weights is None:
            raise ValueError("masked_positions need masked_weights (0 on padding entries)")
        key = jax.random.key(0) if deterministic else self.make_rng("dropout")
        kept_BM = jnp.take_along_axis(input_ids, masked_positions, axis=1)
        sampled_BM = jnp.where(masked_weights > 0, gumbel_max(generated.mlm_logits, key), kept_BM)
        rows_B1 = jnp.arange(input_ids.shape[0])[:, None]
        replaced_BL = input_ids.at[rows_B1, masked_positions].set(sampled_BM)
        out = super().__call__(replaced_BL, attention_mask, token_type_ids, position_ids, segment_ids,
                               deterministic=deterministic)
        return out.replace(mlm_logits=generated.mlm_logits, sampled_ids=sampled_BM)

    hf_subfolders = ("generator",)  # where `hf_models` puts the models beside the discriminator

    def join_hf_models(self, parts: dict[str, dict]) -> dict:
        """The inverse of `hf_models`: the discriminator's parameters ("") and, when given,
        the generator's ("generator"; its copy of the embeddings is dropped, the
        discriminator's are shared) as this model's tree."""
        joined = dict(parts[""])
        if "generator" in parts:
            generator = dict(parts["generator"])
            generator["electra"] = {k: v for k, v in generator["electra"].items() if k != "embeddings"}
            joined["generator"] = generator
        return joined

    def hf_models(self, params: dict) -> dict[str, tuple[nn.Module, dict]]:
        """The two Hugging Face models in `params`, by the subfolder they are exported to:
        "" the discriminator (`ElectraForPreTraining`), "generator" the generator
        (`ElectraForMaskedLM`, with a copy of the shared embeddings)."""
        discriminator = {k: v for k, v in params.items() if k != "generator"}
        generator = dict(params["generator"])
        generator["electra"] = {**generator["electra"], "embeddings": params["electra"]["embeddings"]}
        return {
            "": (ElectraForPreTraining(self.config, parent=None), discriminator),
            "generator": (ElectraForMaskedLM(self.config.generator_config(), parent=None), generator),
        }


def gumbel_max(logits_BMV: Array, key: Array) -> Array:
    """One token per position sampled from softmax(logits) by the Gumbel-max trick, with
    no gradient. [B, M] int32."""
    noise_BMV = jax.random.gumbel(key, logits_BMV.shape, jnp.float32)
    return jnp.argmax(jax.lax.stop_gradient(logits_BMV).astype(jnp.float32) + noise_BMV, axis=-1).astype(jnp.int32)
