"""The data stages: `sources` (text of a data.source, split into train and val) -> `prepare`
(tokenizer fitted on the train split, both splits written as shards) -> `shards` (the file
format, read by memmap) -> `sampler` (random training windows, and the consecutive ones of evaluation)."""
