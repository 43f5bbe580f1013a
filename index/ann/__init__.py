"""FAISS specifics: the vector index keyed by database ids, its build at scale, its checkpoints on disk."""
