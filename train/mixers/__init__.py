"""Mixers: turn one or more stream batches into a MixedBatch (images, y_a, y_b, lam)."""
