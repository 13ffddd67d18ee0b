"""Shards: WebDataset tar shards, manifest, random-access and DALI indexes."""
