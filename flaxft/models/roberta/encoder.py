"""RoBERTa's encoder: BERT's, with positions that start after the padding index.

Shape suffixes as in `flaxft.models.bert.encoder`.
"""

import jax
import jax.numpy as jnp

from flaxft.models.bert.encoder import BertModule
from flaxft.models.layers import segment_positions

Array = jax.Array


class RobertaModule(BertModule):
    """BERT's embeddings, layers and pooler; only the default position ids differ."""

    def default_position_ids(self, input_ids_BL: Array, segment_ids_BL: Array | None) -> Array:
        """As transformers computes them: pad_token_id + 1, + 2, ... on real tokens (those
        that are not pad_token_id), pad_token_id on padding; with segment ids, restarting
        in each packed segment (segment 0 is padding). [B, L]."""
        pad = self.config.pad_token_id
        if segment_ids_BL is not None:
            real_BL, count_BL = segment_ids_BL > 0, segment_positions(segment_ids_BL) + 1
        else:
            real_BL = input_ids_BL != pad
            count_BL = jnp.cumsum(real_BL, axis=1, dtype=jnp.int32)
        return jnp.where(real_BL, count_BL + pad, pad)
