#!/usr/bin/env bash
# End to end on one GPU (after the offline wheels are staged into /tmp/site): where does the
# end-to-end step wait, and which loader settings close the gap? In priority order, each under its
# own time limit, so whatever finishes comes back in $OUT:
#   1. generate the iNat-like set here (16 cores), and copies rewritten with `--max-size` PX for
#      each PX in $MAX_SIZES (the same images, fewer pixels to decode; variants 'shards=...'),
#   2. bench/e2e.py: ceiling, a sweep of loader variants on CMO ($VARIANTS: stream priority,
#      hardware-decoder share, threads, prefetch, shards, CPU decode of Q) with profiles and the
#      torchvision reference, then SMC and OTmix bank with the fastest variant (no reference: their
#      targets are vs the ceiling only),
#   3. (RUN_TRAIN=1) a short real `ltpipe train` on CUDA (DALI GPU loader, compile, stream),
#   4. (RUN_LOADER=1) the loader benchmark with the reference loaders (LOADER_EXTRA='--max-sizes
#      384,256 --skip-reference' measures the stored copies instead: decode rate per size).
# Session 2 ran the first VARIANTS below (results in bench/results/e2e-*h100*.json); the default
# now measures the next lever, smaller stored images, against the best setting found then. Session 3
# measured on the CPU (bench/results/loader-stored-size-cpu.json) what decoding Q on the CPU costs:
# ~295 img/s per core as generated, ~490 at 384 px, ~660 at 256, so 16 cores cannot feed Q (5.4k
# img/s) from the images as generated: no 'cpudec' variant on them.
# Time: e2e gets what is left of T_TOTAL (585 s) less T_AFTER (5 s; raise it for RUN_TRAIN/RUN_LOADER).
# CPU dry run (tiny): DEVICE=cpu SIZE=default E2E_EXTRA=--tiny MAX_SIZES=16 bash bench/gpu/e2e_sweep.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 NUMBA_ENABLE_CUDASIM=0 PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
DEVICE=${DEVICE:-cuda} SIZE=${SIZE:-inat} OUT=${OUT:-/tmp/out} DATA=${DATA:-/tmp/ltpipe-$SIZE}
mkdir -p "$OUT" /tmp/traces
[ "$DEVICE" = cuda ] && { python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARN | tail -3; nvidia-smi -L; }
log() { echo "== $(date +%T) $*"; }
# session 2: "prio=default;prio=high;prio=default,hw=0.8;prio=high,hw=0.8;prio=high,hw=0.9;prio=high,hw=0.8,threads=12;prio=high,hw=0.8,prefetch=4"
MAX_SIZES=${MAX_SIZES:-"384 256"}
VARIANTS=${VARIANTS:-"prio=high$(for px in $MAX_SIZES; do printf ';prio=high,shards=%s;prio=high,shards=%s,cpudec=minority' "$DATA-$px" "$DATA-$px"; done)"}
log gpu-test; [ "$DEVICE" = cuda ] && timeout 60 python3 -m pytest tests/test_bench_trace.py tests/test_pipeline_loader.py tests/test_train_step_timer.py -m gpu -q -p no:cacheprovider 2>&1 | tail -2
log generate; /usr/bin/time -f "generate: %e s" timeout "${T_GEN:-100}" ltpipe shard synthetic "$DATA" --size "$SIZE" --workers "$(nproc)" 2>&1 | tail -3
# the copies are rewritten from the shards (about twice as fast as rendering again on the CPU)
for px in $MAX_SIZES; do log "copy --max-size $px"; timeout "${T_GEN:-100}" ltpipe shard "shards:$DATA" "$DATA-$px" --max-size "$px" --workers "$(nproc)" 2>&1 | tail -1; done
# e2e gets what is left of T_TOTAL (one device call: run it with timeout_s >= T_TOTAL + 10)
log e2e; timeout "${T_E2E:-$(( ${T_TOTAL:-585} - SECONDS - ${T_AFTER:-5} ))}" python3 -m ltpipe.bench.e2e --device "$DEVICE" --shards "$DATA" ${E2E_EXTRA:-} \
  --mixers cmo,smc,otmix --reference-mixers cmo --steps "${STEPS:-20}" --repeats 2 --warmup 8 --profile-steps 3 \
  --variants "$VARIANTS" --out /tmp/traces 2>&1 | grep -v -E "Warn|USDT|profiler_st" | tee "$OUT/e2e.log" | grep -v -E "^ |^-|^Name|^Self" | tail -40
cp /tmp/traces/e2e-*.json "$OUT/" 2>/dev/null
(cd /tmp/traces && tar cf "$OUT/traces.tar" e2e-cmo-*trace.json.gz 2>/dev/null)
[ "${RUN_TRAIN:-0}" = 1 ] && log train && timeout "${T_TRAIN:-120}" ltpipe train "$DATA" --out /tmp/run --device "$DEVICE" --mixer cmo \
  --model "${TRAIN_MODEL:-resnet50}" --preset "${PRESET:-imagenet}" --image-size "${IMG:-224}" --batch-size "${BATCH:-256}" \
  --epochs 1 --warmup 0 --schedule constant --lr 0.1 --compile --no-progress 2>&1 | grep -v -E "Warn|USDT" | tail -12
[ "${RUN_TRAIN:-0}" = 1 ] && cp /tmp/run/final.json /tmp/run/metrics.jsonl "$OUT/" 2>/dev/null
[ "${RUN_LOADER:-0}" = 1 ] && log loader && timeout "${T_LOADER:-90}" python3 -m ltpipe.bench.loader --device "$DEVICE" --shards "$DATA" --workers "$(nproc)" \
  --steps 20 --repeats 2 --ref-steps 8 --warmup 5 --out "$OUT" ${LOADER_EXTRA:-} 2>&1 | grep -v Warn | tail -8
log done; ls -la "$OUT"
