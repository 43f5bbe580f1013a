"""Ingestion: sources (reader) -> decode and embed -> store (writer)."""
