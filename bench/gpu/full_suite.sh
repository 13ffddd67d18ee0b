#!/usr/bin/env bash
# H100 run with DALI/POT/webdataset staged in /tmp/site (offline wheels): kernels,
# loader throughput, end-to-end CMO and OTmix step cost, in priority order, each under its own
# time limit so whatever finishes comes back in $OUT. Data is generated here (16 cores).
set -uo pipefail
export PYTHONUNBUFFERED=1 NUMBA_ENABLE_CUDASIM=0 PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARN | tail -3
log() { echo "== $(date +%T) $*"; }
log kernels; timeout "${T_KERNELS:-75}" python3 -m pytest tests/test_kernels_gpu.py -m gpu -q -x -p no:cacheprovider 2>&1 | tail -3
timeout "${T_KERNELS:-75}" python3 -m ltpipe.bench.kernels --device cuda --out "$OUT" 2>&1 | grep -v Warn | tail -22
log generate; /usr/bin/time -f "generate: %e s" timeout "${T_GEN:-100}" ltpipe shard synthetic /tmp/inat --size inat --workers 16 2>&1 | tail -4
log loader; timeout "${T_LOADER:-110}" python3 -m ltpipe.bench.loader --device cuda --shards /tmp/inat --workers 16 \
  --steps 30 --repeats 1 --ref-steps 8 --warmup 5 --out "$OUT" 2>&1 | grep -v Warn | tail -14
log e2e; timeout "${T_E2E:-150}" python3 -m ltpipe.bench.e2e --device cuda --shards /tmp/inat --mixers cmo \
  --steps 30 --repeats 1 --ref-steps 8 --out "$OUT" 2>&1 | grep -v Warn | tail -14
log otmix; timeout "${T_OT:-60}" python3 -m ltpipe.bench.train_step --device cuda --model resnet50 --batch-size 128 \
  --image-size 224 --precision bf16 --channels-last --mixers none,cmo,otmix --mixer-opt cmo.prob=1.0 \
  --mixer-opt otmix.prob=1.0 --mixer-opt otmix.mu=0.0 --mixer-opt otmix.mode=bank --shards /tmp/inat \
  --runs 20 --rounds 2 --out "$OUT/otmix-bank" 2>&1 | grep -v Warn | tail -6
log done; ls -R "$OUT"
