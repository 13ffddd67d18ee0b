"""Benchmarks: the loader, the training step end to end, the kernels, shard writing, fidelity.

Each module runs as ``python -m ltpipe.bench.<name>`` (``ltpipe bench loader|e2e|kernels`` wraps
the first three) and writes a result JSON whose schema ``harness.write_result`` defines. The
measurements, their history and how to reproduce them: bench/README.md. A source checkout keeps
its results in bench/results/ (data, not shipped in the wheel).
"""
