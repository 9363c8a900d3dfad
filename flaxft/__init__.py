"""flaxft: a JAX/Flax training stack for BERT-family encoders."""

__version__ = "0.1.0"
