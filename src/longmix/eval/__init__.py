"""Evaluation: needle in a haystack, synthetic retrieval tasks, per-domain loss by
position, and a report comparing runs. Needs the `train` extra (torch, transformers)."""
