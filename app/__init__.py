"""pe-search: image search and embeddings on Meta's Perception Encoder (PE-Core)."""

__version__ = "0.1.0"
