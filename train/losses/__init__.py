"""Losses: per-sample base losses, class re-weighting, the mixed-label wrapper and auxiliary terms."""
