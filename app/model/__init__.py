"""The model: PE-Core variants, where their weights come from, precision modes, the encoder and the registry."""
