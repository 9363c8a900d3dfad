"""ELECTRA's encoder: BERT's layers over embeddings of width E (embedding_size),
projected to the hidden size D when they differ; no pooler.

Shape suffixes as in `flaxft.models.bert.encoder`; E embedding size.
"""

import flax.linen as nn
import jax

from flaxft.models.bert.encoder import BertEmbeddings, BertEncoder, BertModule
from flaxft.models.electra.configuration import ElectraConfig
from flaxft.models.layers import dense

Array = jax.Array


class ElectraModule(BertModule):
    """Embeddings [B, L, E], `embeddings_project` E -> D (when E != D), BERT's layers.

    shared_embeddings: an embeddings module owned elsewhere, used instead of its own (the
    generator's in ELECTRA pretraining, which shares the discriminator's)."""

    config: ElectraConfig
    add_pooling_layer: bool = False
    shared_embeddings: nn.Module | None = None

    def setup(self):
        cfg = self.config
        if self.add_pooling_layer:
            raise ValueError("ELECTRA has no pooler")
        if self.shared_embeddings is not None:
            self.embeddings = self.shared_embeddings
        else:
            self.embeddings = BertEmbeddings(cfg, features=cfg.embedding_size)
        if cfg.embedding_size != cfg.hidden_size:
            self.embeddings_project = dense(cfg, cfg.hidden_size, ("embed", "hidden"), ("hidden",), "embeddings_project")
        self.encoder = BertEncoder(cfg)

    def embed(self, input_ids_BL: Array, token_type_ids_BL: Array, position_ids_BL: Array,
              deterministic: bool) -> Array:
        """The encoder's input [B, L, D]: embeddings [B, L, E], projected when E != D."""
        x_BLE = self.embeddings(input_ids_BL, token_type_ids_BL, position_ids_BL, deterministic)
        if self.config.embedding_size != self.config.hidden_size:
            return self.embeddings_project(x_BLE)
        return x_BLE
