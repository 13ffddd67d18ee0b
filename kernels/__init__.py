"""Kernels: CutMix/ResizeMix boxes, in-place paste and resize-paste, batched log-domain Sinkhorn."""
