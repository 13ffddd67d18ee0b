#!/usr/bin/env bash
# H100 check without DALI: real CUDA kernels vs reference/POT, kernel benchmark, training-step cost.
# Needs only POT and numpy==2.4.6 as extra wheels (carried in .whlk/). Results land in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 NUMBA_ENABLE_CUDASIM=0
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whlk/*.whl || exit 1
export PYTHONPATH=/tmp/site
pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || pip install --no-deps --no-build-isolation -e . | tail -3
nvidia-smi -L; python3 -c "import torch, numba, numpy; print(torch.__version__, numba.__version__, numpy.__version__)"
timeout 150 python3 -m pytest tests/test_kernels_gpu.py -m gpu -q -x -p no:cacheprovider 2>&1 | tail -15
timeout 120 python3 -m ltpipe.bench.kernels --device cuda --out "$OUT" 2>&1 | tail -30
timeout 200 python3 -m ltpipe.bench.train_step --device cuda --model resnet50 --batch-size 256 --image-size 224 \
  --precision bf16 --channels-last --mixers none,cmo,resizemix,smc --mixer-opt cmo.prob=1.0 \
  --mixer-opt smc.views=1 --mixer-opt smc.view_aug=none --out "$OUT" 2>&1 | tail -25
ls "$OUT"
