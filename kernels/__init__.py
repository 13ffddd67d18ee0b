"""Kernels: CutMix/ResizeMix boxes, in-place paste and resize-paste, batched log-domain Sinkhorn.

Each operation dispatches on the tensor's device: CUDA tensors run a numba.cuda kernel on torch's
current stream (compiled lazily, once); other devices run the torch reference. Importing this
package does not import numba.
"""

from ltpipe.kernels.boxes import cutmix_boxes, resizemix_boxes, sample_lam
from ltpipe.kernels.paste import paste_, paste_reference, resize_paste_, resize_paste_reference
from ltpipe.kernels.sinkhorn import sinkhorn, sinkhorn_argmax, sinkhorn_reference
from ltpipe.shards import __version__

__all__ = [
    "sample_lam",
    "cutmix_boxes",
    "resizemix_boxes",
    "paste_",
    "resize_paste_",
    "paste_reference",
    "resize_paste_reference",
    "sinkhorn",
    "sinkhorn_argmax",
    "sinkhorn_reference",
    "__version__",
]
