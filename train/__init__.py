"""Train: mixers, losses, models and the lean training loop."""
