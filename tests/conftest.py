"""Test setup: numba's CUDA simulator must be chosen before numba is first imported."""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
