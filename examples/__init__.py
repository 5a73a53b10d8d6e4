"""Example models for optsweep: digits (MLP and CNN) and MiniLM sentence embeddings."""
