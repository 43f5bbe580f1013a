"""Export and import of a collection in the layout clip-retrieval users know: `.npy` embedding shards
(or an embedding column) beside metadata Parquet files, with a JSON manifest."""
