"""Data stages: sources of text, and tokenized binary shards."""
