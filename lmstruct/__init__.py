"""lmstruct: latent modality structures for multi-modal representation learning (JAX/Flax)."""

__version__ = "0.1.0"
