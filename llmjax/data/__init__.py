"""Data: sources (TFDS), tokenizers, packing, and the batch pipeline."""
