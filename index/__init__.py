"""The vector store: FAISS indexes with SQLite metadata (built on top of the embedding service)."""
